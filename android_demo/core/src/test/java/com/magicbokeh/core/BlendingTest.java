package com.magicbokeh.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.junit.jupiter.api.Test;

class BlendingTest {
    /** torch fuses start + step * i into one rounding; the double path must equal Math.fma for every ramp length. */
    @Test
    void linspaceEqualsTheFusedMultiplyAddForAllRampLengths() {
        for (int n = 2; n <= 4096; n++) {
            float[] rise = Blending.linspace(0f, 1f, n);
            float[] fall = Blending.linspace(1f, 0f, n);
            float up = 1f / (n - 1), down = -1f / (n - 1);
            for (int i = 0; i < n; i++) {
                float expectRise = i < n / 2 ? Math.fma(up, (float) i, 0f) : Math.fma(-up, (float) (n - 1 - i), 1f);
                float expectFall = i < n / 2 ? Math.fma(down, (float) i, 1f) : Math.fma(-down, (float) (n - 1 - i), 0f);
                assertEquals(Float.floatToRawIntBits(expectRise), Float.floatToRawIntBits(rise[i]), "rise n=" + n + " i=" + i);
                assertEquals(Float.floatToRawIntBits(expectFall), Float.floatToRawIntBits(fall[i]), "fall n=" + n + " i=" + i);
                // For even lengths (every tile - stride of the configs) neighbouring tiles' edges mirror
                // exactly: the falling ramp is the rising one reversed. For odd n the middle value is
                // computed from different ends (0.5 may round differently), so this is not a property then.
                if (n % 2 == 0) {
                    assertEquals(Float.floatToRawIntBits(rise[n - 1 - i]), Float.floatToRawIntBits(fall[i]),
                            "mirror n=" + n + " i=" + i);
                }
            }
        }
    }

    @Test
    void weightsSumToOneOnlyWhereRampsOverlap() {
        TilePlan plan = new TilePlan(300, 200, 128, 64);
        Blending blending = new Blending(1, 300, 200);
        for (TilePlan.Box box : plan.boxes) {
            float[] ones = new float[128 * 128];
            java.util.Arrays.fill(ones, 1f);
            blending.add(box, ones, Blending.weights(box, 300, 200, 64));
        }
        // Blending a constant image gives the constant back wherever the weights are positive.
        for (float v : blending.finish()) assertEquals(1f, v, 1e-6f);
    }

    @Test
    void decoderOutputOfTheWrongSizeIsRefused() {
        TilePlan plan = new TilePlan(128, 128, 128, 64);
        Blending blending = new Blending(3, 128, 128);
        BokehException ex = assertThrows(BokehException.class,
                () -> blending.add(plan.boxes.get(0), new float[10], new float[128 * 128]));
        assertEquals(true, ex.getMessage().contains("from the decoder"), ex.getMessage());
    }

    @Test
    void planOrderIsGridThenBottomThenRightThenCorner() {
        TilePlan plan = new TilePlan(200, 330, 128, 64);
        StringBuilder kinds = new StringBuilder();
        for (TilePlan.Box b : plan.boxes) kinds.append(b.kind.charAt(0));
        // rows 0,64 (+ bottom at 72); cols 0,64,128,192 (+ right at 202)
        assertEquals("ggggggggbbbbrrc", kinds.toString());
        assertEquals(72, plan.boxes.get(8).top);
        assertEquals(202, plan.boxes.get(12).left);
    }
}

package com.magicbokeh.core;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;

/**
 * Checks every intermediate of the Java pipeline against one golden folder: 8-bit arrays, the
 * focus bits, the maps, the plan, the weights and the blend exactly (the format fixes their
 * float32 arithmetic); the colour statistics to the golden's stated relative tolerance; the final
 * photo exactly when fed the recorded statistics, and within the format's tolerance from our own.
 */
final class GoldenCheck {
    private GoldenCheck() {
    }

    /** The golden folder {@code name} under the folder the test run was given ({@code -Dmagicbokeh.goldens}). */
    static Path folder(String name) {
        String root = System.getProperty("magicbokeh.goldens");
        if (root == null) {
            fail("-Dmagicbokeh.goldens=DIR is not set: run these tests through tests/android_demo (pytest), "
                    + "which generates the goldens with `python -m runtime_py golden`");
        }
        Path dir = Paths.get(root, name);
        if (!Files.isDirectory(dir)) fail("golden " + dir + " was not generated");
        return dir;
    }

    static void assertBitsEqual(String what, float[] expected, float[] actual) {
        assertEquals(expected.length, actual.length, what + ": length");
        for (int i = 0; i < expected.length; i++) {
            if (Float.floatToRawIntBits(expected[i]) != Float.floatToRawIntBits(actual[i])) {
                fail(what + " differs at flat index " + i + ": golden " + expected[i] + ", Java " + actual[i]);
            }
        }
    }

    static void assertBytesEqual(String what, byte[] expected, byte[] actual) {
        assertEquals(expected.length, actual.length, what + ": length");
        for (int i = 0; i < expected.length; i++) {
            if (expected[i] != actual[i]) {
                fail(what + " differs at flat index " + i + ": golden " + (expected[i] & 0xFF) + ", Java " + (actual[i] & 0xFF));
            }
        }
    }

    /** Run every check on golden {@code name}; returns the golden for case-specific assertions. */
    static Golden check(String name) {
        Golden g = Golden.read(folder(name));
        RgbImage image = g.image();
        DepthMap depth = g.depth();
        Focus focus = g.focus();

        byte[] depthU8 = depth.toU8();
        assertBytesEqual("depth_u8", g.bytes("depth_u8"), depthU8);
        float f = focus.value(depthU8, g.width, g.height);
        assertEquals(g.focusValueBits, Float.floatToRawIntBits(f), "focus value bits (Java f = " + f + ")");

        int padRows = Math.max(0, g.config.tile - g.height), padCols = Math.max(0, g.config.tile - g.width);
        assertEquals(g.padRows, padRows, "padding rows");
        assertEquals(g.padCols, padCols, "padding cols");
        int ph = g.height + padRows, pw = g.width + padCols;
        byte[] paddedDepth = new byte[ph * pw];
        byte[] paddedImage = new byte[ph * pw * 3];
        for (int r = 0; r < ph; r++) {
            for (int c = 0; c < pw; c++) {
                int src = PixelMath.reflect(r, g.height) * g.width + PixelMath.reflect(c, g.width);
                paddedDepth[r * pw + c] = depthU8[src];
                for (int ch = 0; ch < 3; ch++) paddedImage[(r * pw + c) * 3 + ch] = image.pixels[src * 3 + ch];
            }
        }
        assertBytesEqual("depth_u8_padded", g.bytes("depth_u8_padded"), paddedDepth);
        assertBytesEqual("image_u8_padded", g.bytes("image_u8_padded"), paddedImage);

        float[][] maps = BokehPipeline.defocusMaps(depthU8, g.width, g.height, padRows, padCols, f, g.k,
                g.config.inFocusThreshold);
        assertBitsEqual("defocus", g.floats("defocus"), maps[0]);
        assertBitsEqual("in_focus", g.floats("in_focus"), maps[1]);

        TilePlan plan = new TilePlan(ph, pw, g.config.tile, g.config.stride);
        List<TilePlan.Box> expected = g.boxes;
        assertEquals(expected.size(), plan.count(), "tile count");
        for (int i = 0; i < plan.count(); i++) {
            TilePlan.Box a = expected.get(i), b = plan.boxes.get(i);
            assertEquals(a.index + " " + a.top + " " + a.left + " " + a.size + " " + a.kind,
                    b.index + " " + b.top + " " + b.left + " " + b.size + " " + b.kind, "plan box " + i);
            assertBitsEqual("tile " + i + " weight", g.floats(g.tileArray(i, "weight")),
                    Blending.weights(b, ph, pw, plan.stride));
        }

        ReplayTileModel replay = new ReplayTileModel(g);
        RenderResult result = new BokehPipeline(g.config).render(image, depth, focus, g.k, replay, RenderListener.NONE);
        assertEquals(plan.count(), replay.tilesPlayed(), "tiles played back");
        assertBitsEqual("blended", g.floats("blended"), result.blended);
        assertBytesEqual("raw_u8", g.bytes("raw_u8"), result.raw.pixels);

        PixelMath.ChannelStats[] recorded = g.colourStats();
        double rel = ((Number) ((java.util.Map<?, ?>) g.index.get("tolerances")).get("colour_statistics_rel")).doubleValue();
        assertClose("mean_output", recorded[0].mean, result.outputStats.mean, rel);
        assertClose("std_output", recorded[0].std, result.outputStats.std, rel);
        assertClose("mean_input", recorded[1].mean, result.inputStats.mean, rel);
        assertClose("std_input", recorded[1].std, result.inputStats.std, rel);

        byte[] finalU8 = g.bytes("final_u8");
        // Fed the reference's own statistics, the per-pixel arithmetic must reproduce it exactly.
        assertBytesEqual("final_u8 (recorded statistics)", finalU8,
                PixelMath.colourFix(result.raw, recorded[0], recorded[1]).pixels);
        // From our own sums: within one level everywhere and identical at >= 99.9 % (the format's tolerance).
        int identical = 0;
        for (int i = 0; i < finalU8.length; i++) {
            int d = Math.abs((finalU8[i] & 0xFF) - (result.image.pixels[i] & 0xFF));
            assertTrue(d <= 1, "final_u8 differs by " + d + " at flat index " + i);
            if (d == 0) identical++;
        }
        assertTrue(identical >= 0.999 * finalU8.length, "final_u8 identical at only " + identical + " of " + finalU8.length);
        return g;
    }

    static void assertClose(String what, float[] expected, float[] actual, double rel) {
        assertEquals(expected.length, actual.length, what);
        for (int i = 0; i < expected.length; i++) {
            assertTrue(Math.abs(expected[i] - actual[i]) <= rel * Math.abs(expected[i]),
                    what + "[" + i + "]: golden " + expected[i] + ", Java " + actual[i]);
        }
    }
}

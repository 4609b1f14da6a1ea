package com.magicbokeh.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Bad inputs are refused before the model runs, with a message naming the problem; progress and cancel. */
class PipelineInputTest {
    private static final ModelConfig TINY = new ModelConfig("tiny", 128, 64, 4, 16, 0.1f);

    /** A model that returns zeros of the right sizes and counts its calls. */
    static final class ZeroModel implements TileModel {
        int calls;

        @Override
        public float[] encode(float[] rgb) {
            calls++;
            return new float[4 * 16 * 16];
        }

        @Override
        public float[] denoise(float[] latent, float[] defocus, float[] inFocus) {
            return new float[4 * 16 * 16];
        }

        @Override
        public float[] decode(float[] x0) {
            return new float[3 * 128 * 128];
        }

        @Override
        public String label() {
            return "zeros";
        }
    }

    private static RgbImage image(int w, int h) {
        return new RgbImage(w, h, new byte[w * h * 3]);
    }

    private static DepthMap depth(int w, int h) {
        return DepthMap.ofFloats(w, h, new float[w * h]);
    }

    @Test
    void emptyMaskIsRefused() {
        ZeroModel model = new ZeroModel();
        InputException ex = assertThrows(InputException.class, () -> new BokehPipeline(TINY).render(image(130, 140),
                depth(130, 140), Focus.mask(new byte[130 * 140], 130, 140), 16, model, RenderListener.NONE));
        assertTrue(ex.getMessage().contains("empty"), ex.getMessage());
        assertEquals(0, model.calls, "nothing may run before the inputs are checked");
    }

    @Test
    void depthOfAnotherSizeIsRefused() {
        InputException ex = assertThrows(InputException.class, () -> new BokehPipeline(TINY).render(image(130, 140),
                depth(140, 130), Focus.point(1, 1), 16, new ZeroModel(), RenderListener.NONE));
        assertTrue(ex.getMessage().contains("130x140 (HxW) but the image is 140x130"), ex.getMessage());
    }

    @Test
    void apertureOutsideOneToThirtyTwoIsRefused() {
        for (int k : new int[] {0, 33}) {
            InputException ex = assertThrows(InputException.class, () -> new BokehPipeline(TINY).render(image(130, 140),
                    depth(130, 140), Focus.point(1, 1), k, new ZeroModel(), RenderListener.NONE));
            assertTrue(ex.getMessage().contains("1..32"), ex.getMessage());
        }
    }

    @Test
    void tapOutsideTheImageIsRefused() {
        InputException ex = assertThrows(InputException.class, () -> new BokehPipeline(TINY).render(image(130, 140),
                depth(130, 140), Focus.point(130, 0), 8, new ZeroModel(), RenderListener.NONE));
        assertTrue(ex.getMessage().contains("outside"), ex.getMessage());
    }

    @Test
    void depthOutsideZeroToOneIsRefused() {
        InputException ex = assertThrows(InputException.class,
                () -> DepthMap.ofFloats(2, 1, new float[] {0.5f, 1.5f}));
        assertTrue(ex.getMessage().contains("[0, 1]"), ex.getMessage());
    }

    @Test
    void progressIsReportedPerTileAndCancelStopsBetweenTiles() {
        List<Integer> seen = new ArrayList<>();
        RenderResult result = new BokehPipeline(TINY).render(image(200, 150), depth(200, 150), Focus.point(3, 3), 8,
                new ZeroModel(), (done, tiles, box) -> seen.add(done));
        assertEquals(result.plan.count(), seen.size());
        assertEquals(6, result.plan.count());

        ZeroModel model = new ZeroModel();
        RenderListener cancelAfterTwo = new RenderListener() {
            int done;

            @Override
            public void onTileDone(int tilesDone, int tiles, TilePlan.Box box) {
                done = tilesDone;
            }

            @Override
            public boolean isCancelled() {
                return done >= 2;
            }
        };
        CancelledException ex = assertThrows(CancelledException.class, () -> new BokehPipeline(TINY).render(
                image(200, 150), depth(200, 150), Focus.point(3, 3), 8, model, cancelAfterTwo));
        assertEquals(2, model.calls);
        assertTrue(ex.getMessage().contains("2 of 6"), ex.getMessage());
    }

    @Test
    void reflectPaddingRepeatsLikeNumpy() {
        // np.pad(np.arange(3), (0, 7), mode="reflect") == [0 1 2 1 0 1 2 1 0 1]; a 1-pixel side repeats its edge.
        int[] expected = {0, 1, 2, 1, 0, 1, 2, 1, 0, 1};
        for (int i = 0; i < expected.length; i++) assertEquals(expected[i], PixelMath.reflect(i, 3));
        assertEquals(0, PixelMath.reflect(5, 1));
    }
}

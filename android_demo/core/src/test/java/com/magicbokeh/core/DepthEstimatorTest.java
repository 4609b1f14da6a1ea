package com.magicbokeh.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/** The depth host steps against runtime_py's estimate_depth_static around the same stand-in network. */
class DepthEstimatorTest {
    /** The network of tests/android_demo/conftest._depth_fixture. */
    static float[] network(float[] rgb, int size) {
        float[] out = new float[size * size];
        int plane = size * size;
        for (int y = 0; y < size; y++) {
            for (int x = 0; x < size; x++) {
                int i = y * size + x;
                out[i] = rgb[i] * 0.3f + rgb[plane + i] * 0.5f + rgb[2 * plane + i] * 0.2f + ((float) y / size) * 0.1f;
            }
        }
        return out;
    }

    @Test
    void depthMatchesThePythonHostSteps() throws IOException {
        Path dir = GoldenCheck.folder("depth_fixture");
        String[] meta = new String(Files.readAllBytes(dir.resolve("meta.txt")), StandardCharsets.UTF_8).trim().split(" ");
        int size = Integer.parseInt(meta[0]), height = Integer.parseInt(meta[1]), width = Integer.parseInt(meta[2]);
        RgbImage image = new RgbImage(width, height, Files.readAllBytes(dir.resolve("image_u8.raw")));
        float[] expected = new float[height * width];
        ByteBuffer.wrap(Files.readAllBytes(dir.resolve("depth_f32.raw"))).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(expected);
        DepthMap depth = new DepthEstimator(size).estimate(image, rgb -> network(rgb, size));
        // Both sides interpolate the same samples; torch in float32 (bicubic accumulates 16 taps),
        // this code in double. Min-max normalisation stretches the disparity's ~0.5 range to 1, so
        // 1e-5 allows ~20 float32 ulps of the [0, 1] map, far below one 8-bit level (0.0039).
        byte[] u8 = depth.toU8();
        byte[] expectedU8 = DepthMap.ofFloats(width, height, expected).toU8();
        int differentU8 = 0;
        float worst = 0;
        for (int i = 0; i < expected.length; i++) {
            worst = Math.max(worst, (float) Math.abs(depth.valueAt(i) - expected[i]));
            if (u8[i] != expectedU8[i]) differentU8++;
        }
        assertTrue(worst <= 1e-5f, "max abs difference " + worst);
        assertTrue(differentU8 <= expected.length / 1000 + 1, differentU8 + " 8-bit depth values differ");
    }

    @Test
    void wrongOutputSizeIsRefused() {
        RgbImage image = new RgbImage(4, 3, new byte[36]);
        BokehException ex = assertThrows(BokehException.class, () -> new DepthEstimator(8).estimate(image, rgb -> new float[5]));
        assertTrue(ex.getMessage().contains("expected 64"), ex.getMessage());
        assertEquals(8, new DepthEstimator(8).inputSize());
    }
}

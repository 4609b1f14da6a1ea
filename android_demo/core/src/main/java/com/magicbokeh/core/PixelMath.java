package com.magicbokeh.core;

/**
 * The map and pixel arithmetic of runtime_py/pipeline.py, each step rounded to float32 in the
 * reference's order (see docs/golden_format.md, "The arithmetic, exactly").
 */
public final class PixelMath {
    /** The colour fix's epsilon under the square root, as the reference's COLOUR_FIX_EPS. */
    public static final float COLOUR_FIX_EPS = 1e-5f;

    private PixelMath() {
    }

    /** numpy's "reflect" padding: the source index for padded index {@code i} on a side of {@code n}. */
    public static int reflect(int i, int n) {
        if (i < n) return i;
        if (n == 1) return 0;
        int period = 2 * (n - 1);
        int m = i % period;
        return m < n ? m : period - m;
    }

    /** {@code abs(d - f) * K / 32} with {@code d = u8 / 255}, each operation in float32. */
    public static float defocus(int depthU8, float focus, int k) {
        float d = depthU8 / 255f;
        return Math.abs(d - focus) * (float) k / 32f;
    }

    /** {@code 1 - [D > threshold]}. */
    public static float inFocus(float defocus, float threshold) {
        return defocus > threshold ? 0f : 1f;
    }

    /** The encoder's input value {@code 2 * (u8 / 255) - 1}. */
    public static float toModelRange(int u8) {
        return (u8 / 255f) * 2f - 1f;
    }

    /** {@code trunc(clamp((y + 1) / 2, 0, 1) * 255)}. */
    public static int toU8(float y) {
        float v = (y + 1f) / 2f;
        v = Math.min(Math.max(v, 0f), 1f);  // NaN stays NaN and becomes 0 below, as torch's byte()
        return (int) (v * 255f);
    }

    /** Check K, the aperture: an integer in 1..32. */
    public static int checkAperture(int k) {
        if (k < 1 || k > 32) {
            throw new InputException("K must be an integer in 1..32 (aperture strength; D = |depth - f| * K / 32), got " + k);
        }
        return k;
    }

    /** Per-channel mean and std ({@code sqrt(unbiased var + eps)}) of an RGB image on [0, 1]. */
    public static final class ChannelStats {
        public final float[] mean;
        public final float[] std;

        public ChannelStats(float[] mean, float[] std) {
            this.mean = mean;
            this.std = std;
        }

        /** Sums in double (the reference's reduction order is not fixed; see the golden format's tolerances). */
        public static ChannelStats of(RgbImage image) {
            int n = image.width * image.height;
            float[] mean = new float[3];
            float[] std = new float[3];
            for (int c = 0; c < 3; c++) {
                double sum = 0;
                for (int i = 0; i < n; i++) sum += (double) ((image.pixels[i * 3 + c] & 0xFF) / 255f);
                double m = sum / n;
                double sq = 0;
                for (int i = 0; i < n; i++) {
                    double d = (double) ((image.pixels[i * 3 + c] & 0xFF) / 255f) - m;
                    sq += d * d;
                }
                float var = n > 1 ? (float) (sq / (n - 1)) : Float.NaN;
                mean[c] = (float) m;
                std[c] = (float) Math.sqrt(var + COLOUR_FIX_EPS);
            }
            return new ChannelStats(mean, std);
        }
    }

    /** AdaIN colour fix: {@code (y - mean_y) / std_y * std_x + mean_x}, clamped and truncated to 8 bits. */
    public static RgbImage colourFix(RgbImage output, ChannelStats outputStats, ChannelStats inputStats) {
        byte[] out = new byte[output.pixels.length];
        int n = output.width * output.height;
        for (int c = 0; c < 3; c++) {
            float my = outputStats.mean[c], sy = outputStats.std[c], mx = inputStats.mean[c], sx = inputStats.std[c];
            for (int i = 0; i < n; i++) {
                float y = (output.pixels[i * 3 + c] & 0xFF) / 255f;
                float v = (y - my) / sy * sx + mx;
                v = Math.min(Math.max(v, 0f), 1f);
                out[i * 3 + c] = (byte) (int) (v * 255f);
            }
        }
        return new RgbImage(output.width, output.height, out);
    }
}

package com.magicbokeh.core;

/**
 * Tile blend weights and the float32 accumulators, bit-identical to runtime_py/tiling.py: ramps
 * are torch.linspace in float32 (computed from both ends towards the middle, each value one fused
 * multiply-add), a tile's weight is
 * the outer product of its row and column ramps, and {@code acc += decoded * weight},
 * {@code wsum += weight} run tile by tile in plan order before one division. Java float arithmetic
 * is IEEE single precision with no fused multiply-add (the blend is unfused in numpy too).
 */
public final class Blending {
    private final int height;
    private final int width;
    private final int channels;
    private final float[] acc;
    private final float[] wsum;

    /** Accumulators for a {@code channels} x {@code height} x {@code width} image. */
    public Blending(int channels, int height, int width) {
        this.height = height;
        this.width = width;
        this.channels = channels;
        this.acc = new float[channels * height * width];
        this.wsum = new float[height * width];
    }

    /** torch.linspace(start, end, n) in float32. */
    public static float[] linspace(float start, float end, int n) {
        float[] out = new float[n];
        if (n == 1) {
            out[0] = start;
            return out;
        }
        float step = (end - start) / (float) (n - 1);
        int half = n >> 1;
        for (int i = 0; i < n; i++) {
            // torch's vectorised kernel fuses the multiply-add: ONE rounding of start + step * i.
            // The product of a float and an int below 2^24 is exact in double and so is the sum
            // with 0 or +-1 for any n < 2^24 (LinspaceTest checks against Math.fma), so rounding the
            // double sum once gives the fused result without Math.fma (Android API 33+).
            out[i] = i < half ? (float) (start + (double) step * i) : (float) (end - (double) step * (n - 1 - i));
        }
        return out;
    }

    /** The weight along one axis of a tile starting at {@code start} on an axis of {@code length} pixels. */
    public static float[] ramp1d(int start, int length, int tile, int stride) {
        float[] weight = new float[tile];
        java.util.Arrays.fill(weight, 1f);
        int ramp = tile - stride;
        if (ramp == 0) return weight;
        if (start > 0) {
            float[] rise = linspace(0f, 1f, ramp);
            for (int i = 0; i < ramp; i++) weight[i] *= rise[i];
        }
        if (start + tile < length) {
            float[] fall = linspace(1f, 0f, ramp);
            for (int i = 0; i < ramp; i++) weight[tile - ramp + i] *= fall[i];
        }
        return weight;
    }

    /** The (T, T) float32 weight of one tile, row-major. */
    public static float[] weights(TilePlan.Box box, int height, int width, int stride) {
        float[] rows = ramp1d(box.top, height, box.size, stride);
        float[] cols = ramp1d(box.left, width, box.size, stride);
        int t = box.size;
        float[] out = new float[t * t];
        for (int r = 0; r < t; r++) {
            for (int c = 0; c < t; c++) out[r * t + c] = rows[r] * cols[c];
        }
        return out;
    }

    /** Add one tile's (C, T, T) output with its weight. */
    public void add(TilePlan.Box box, float[] decoded, float[] weight) {
        int t = box.size;
        if (decoded.length != channels * t * t) {
            throw new BokehException(box + ": expected " + channels * t * t + " values (" + channels + "x" + t + "x" + t
                    + ") from the decoder, got " + decoded.length);
        }
        for (int ch = 0; ch < channels; ch++) {
            for (int r = 0; r < t; r++) {
                int dst = (ch * height + box.top + r) * width + box.left;
                int src = (ch * t + r) * t;
                for (int c = 0; c < t; c++) {
                    float product = decoded[src + c] * weight[r * t + c];
                    acc[dst + c] += product;
                }
            }
        }
        for (int r = 0; r < t; r++) {
            int dst = (box.top + r) * width + box.left;
            for (int c = 0; c < t; c++) wsum[dst + c] += weight[r * t + c];
        }
    }

    /** {@code acc / wsum}, in place in the accumulator (C, H, W), which is returned. */
    public float[] finish() {
        int plane = height * width;
        for (int i = 0; i < plane; i++) {
            if (!(wsum[i] > 0f)) {
                throw new BokehException("blending weights sum to 0 at pixel (row=" + i / width + ", col=" + i % width
                        + "): this tiling leaves pixels without weight");
            }
        }
        for (int ch = 0; ch < channels; ch++) {
            for (int i = 0; i < plane; i++) acc[ch * plane + i] = acc[ch * plane + i] / wsum[i];
        }
        return acc;
    }
}

package com.magicbokeh.core;

/**
 * Depth from the manifest's {@code depth} component, with the host steps of
 * runtime_py.model.depth.estimate_depth_static: the photo resized to the component's static
 * S x S input bicubically (torch's align_corners=False, a = -0.75, borders clamped) on [0, 1]
 * sRGB, clamped to [0, 1]; the (1, 1, S, S) disparity resized back bilinearly with corners
 * aligned; then min-max normalised, {@code (d - min) / (max - min + 1e-8)}. Interpolation is done
 * in double and rounded to float32, so values agree with torch to float32 round-off, not bit for bit.
 */
public final class DepthEstimator {
    /** The depth network: (1, 3, S, S) sRGB in [0, 1] -> (1, 1, S, S) disparity (larger = nearer). */
    public interface DepthModel {
        float[] run(float[] rgb);
    }

    private static final double NORMALIZE_EPS = 1e-8;
    private final int size;

    /** {@code size}: the component's static input side (its manifest input shape [1, 3, S, S]). */
    public DepthEstimator(int size) {
        if (size < 2) throw new IllegalArgumentException("depth input size must be >= 2, got " + size);
        this.size = size;
    }

    /** From the manifest's depth component (its input shape gives S). */
    public static DepthEstimator forManifest(Manifest manifest) {
        int[] shape = manifest.component("depth").inputs.get(0).shape;
        if (shape.length != 4 || shape[1] != 3 || shape[2] != shape[3]) {
            throw new ManifestException("the depth component's input must be [1, 3, S, S], the manifest says "
                    + java.util.Arrays.toString(shape));
        }
        return new DepthEstimator(shape[2]);
    }

    public int inputSize() {
        return size;
    }

    public DepthMap estimate(RgbImage image, DepthModel model) {
        float[] input = resizeBicubic(image, size);
        float[] out = model.run(input);
        if (out == null || out.length != size * size) {
            throw new BokehException("the depth component returned " + (out == null ? "nothing" : out.length + " values")
                    + ", expected " + size * size + " (1, 1, " + size + ", " + size + ")");
        }
        for (int i = 0; i < out.length; i++) {
            if (!Float.isFinite(out[i])) {
                throw new BokehException("the depth component returned a non-finite value (NaN/inf) at flat index " + i);
            }
        }
        float[] back = resizeBilinearAligned(out, size, size, image.height, image.width);
        float lo = Float.POSITIVE_INFINITY, hi = Float.NEGATIVE_INFINITY;
        for (float v : back) {
            lo = Math.min(lo, v);
            hi = Math.max(hi, v);
        }
        float denominator = (float) ((double) (hi - lo) + NORMALIZE_EPS);
        for (int i = 0; i < back.length; i++) back[i] = Math.min(1f, Math.max(0f, (back[i] - lo) / denominator));
        return DepthMap.ofFloats(image.width, image.height, back);
    }

    private static double cubic(double x) {
        double a = -0.75;
        x = Math.abs(x);
        if (x <= 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
        if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
        return 0;
    }

    /** (H, W, 3) uint8 -> (1, 3, S, S) float32 in [0, 1], torch's bicubic (align_corners=False), clamped. */
    static float[] resizeBicubic(RgbImage image, int size) {
        int h = image.height, w = image.width;
        double scaleY = (double) h / size, scaleX = (double) w / size;
        float[] out = new float[3 * size * size];
        int[][] ys = new int[size][4];
        double[][] wy = new double[size][4];
        int[][] xs = new int[size][4];
        double[][] wx = new double[size][4];
        taps(size, scaleY, h, ys, wy);
        taps(size, scaleX, w, xs, wx);
        for (int c = 0; c < 3; c++) {
            for (int oy = 0; oy < size; oy++) {
                for (int ox = 0; ox < size; ox++) {
                    double sum = 0;
                    for (int i = 0; i < 4; i++) {
                        double row = 0;
                        for (int j = 0; j < 4; j++) row += wx[ox][j] * ((image.get(ys[oy][i], xs[ox][j], c)) / 255f);
                        sum += wy[oy][i] * row;
                    }
                    out[(c * size + oy) * size + ox] = Math.min(1f, Math.max(0f, (float) sum));
                }
            }
        }
        return out;
    }

    private static void taps(int size, double scale, int length, int[][] index, double[][] weight) {
        for (int o = 0; o < size; o++) {
            double src = (o + 0.5) * scale - 0.5;
            int base = (int) Math.floor(src);
            double t = src - base;
            for (int k = 0; k < 4; k++) {
                index[o][k] = Math.min(Math.max(base - 1 + k, 0), length - 1);
                weight[o][k] = cubic(t - (k - 1));
            }
        }
    }

    /** (rows, cols) -> (height, width), bilinear with corners aligned. */
    static float[] resizeBilinearAligned(float[] in, int rows, int cols, int height, int width) {
        float[] out = new float[height * width];
        double sy = height > 1 ? (double) (rows - 1) / (height - 1) : 0;
        double sx = width > 1 ? (double) (cols - 1) / (width - 1) : 0;
        for (int y = 0; y < height; y++) {
            double fy = y * sy;
            int y0 = Math.min((int) fy, rows - 1), y1 = Math.min(y0 + 1, rows - 1);
            double ty = fy - y0;
            for (int x = 0; x < width; x++) {
                double fx = x * sx;
                int x0 = Math.min((int) fx, cols - 1), x1 = Math.min(x0 + 1, cols - 1);
                double tx = fx - x0;
                double top = in[y0 * cols + x0] * (1 - tx) + in[y0 * cols + x1] * tx;
                double bottom = in[y1 * cols + x0] * (1 - tx) + in[y1 * cols + x1] * tx;
                out[y * width + x] = (float) (top * (1 - ty) + bottom * ty);
            }
        }
        return out;
    }
}

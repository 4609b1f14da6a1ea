package com.magicbokeh.core;

/**
 * A float depth map in [0, 1] (larger = nearer), row-major (H, W), held in the precision it was
 * produced in: {@code uint8(depth * 255)} is computed in that precision, as the reference does.
 */
public final class DepthMap {
    public final int width;
    public final int height;
    private final float[] single;
    private final double[] dbl;

    private DepthMap(int width, int height, float[] single, double[] dbl) {
        this.width = width;
        this.height = height;
        this.single = single;
        this.dbl = dbl;
        int n = single != null ? single.length : dbl.length;
        if (width < 1 || height < 1 || n != (long) width * height) {
            throw new InputException("depth: " + n + " values do not make a " + width + "x" + height + " (WxH) map");
        }
        for (int i = 0; i < n; i++) {
            double v = single != null ? single[i] : dbl[i];
            if (!(v >= 0.0 && v <= 1.0)) {
                throw new InputException("depth: values must be finite and lie in [0, 1] (min-max normalised, larger = "
                        + "nearer); found " + v + " at row " + i / width + ", column " + i % width);
            }
        }
    }

    public static DepthMap ofFloats(int width, int height, float[] values) {
        return new DepthMap(width, height, values, null);
    }

    public static DepthMap ofDoubles(int width, int height, double[] values) {
        return new DepthMap(width, height, null, values);
    }

    /** {@code uint8(depth * 255)}: the product in the map's precision, truncated toward zero. */
    public byte[] toU8() {
        int n = width * height;
        byte[] out = new byte[n];
        for (int i = 0; i < n; i++) {
            out[i] = (byte) (single != null ? (int) (single[i] * 255f) : (int) (dbl[i] * 255.0));
        }
        return out;
    }

    /** The value at row-major index {@code i}, in the map's precision. */
    public double valueAt(int i) {
        return single != null ? single[i] : dbl[i];
    }

    /** Refuse a depth map whose size differs from the photo's. */
    public void checkMatches(RgbImage image) {
        if (width != image.width || height != image.height) {
            throw new InputException("depth: depth map is " + height + "x" + width + " (HxW) but the image is "
                    + image.height + "x" + image.width);
        }
    }
}

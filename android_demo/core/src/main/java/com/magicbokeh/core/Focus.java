package com.magicbokeh.core;

/**
 * Where to focus: the median 8-bit depth under a mask (e.g. a subject mask), or the depth at a
 * tapped pixel. {@link #value} gives {@code f} as the reference computes it (a float32 / 255).
 */
public abstract class Focus {
    private Focus() {
    }

    /** f in [0, 1] for the 8-bit depth {@code depthU8} (H, W) of an image of {@code width} x {@code height}. */
    public abstract float value(byte[] depthU8, int width, int height);

    /** Check the focus fits the image before any expensive work. */
    public abstract void check(int width, int height);

    /** JSON-friendly description for sidecars. */
    public abstract String describe();

    /** Focus on the median depth under {@code mask} (row-major, non-zero = selected). */
    public static Focus mask(byte[] mask, int width, int height) {
        return new MaskFocus(mask, width, height);
    }

    /** Focus on the depth at column {@code x}, row {@code y}: a tap on the preview. */
    public static Focus point(int x, int y) {
        return new PointFocus(x, y);
    }

    static final class MaskFocus extends Focus {
        final byte[] mask;
        final int width;
        final int height;

        MaskFocus(byte[] mask, int width, int height) {
            if (mask.length != (long) width * height) {
                throw new InputException("focus mask: " + mask.length + " values do not make a " + width + "x" + height + " mask");
            }
            this.mask = mask;
            this.width = width;
            this.height = height;
        }

        @Override
        public void check(int imageWidth, int imageHeight) {
            if (width != imageWidth || height != imageHeight) {
                throw new InputException("focus mask: mask is " + height + "x" + width + " (HxW) but the image is "
                        + imageHeight + "x" + imageWidth);
            }
            for (byte b : mask) {
                if (b != 0) return;
            }
            throw new InputException("focus mask: the focus mask is empty (no non-zero pixel), so there is nothing to "
                    + "focus on; give a mask that covers the subject or a focus point");
        }

        /** torch.median of the selected 8-bit depths: the lower middle value for an even count. */
        @Override
        public float value(byte[] depthU8, int imageWidth, int imageHeight) {
            check(imageWidth, imageHeight);
            long[] histogram = new long[256];
            long count = 0;
            for (int i = 0; i < mask.length; i++) {
                if (mask[i] != 0) {
                    histogram[depthU8[i] & 0xFF]++;
                    count++;
                }
            }
            long rank = (count - 1) / 2;  // 0-based rank of the lower middle value
            long seen = 0;
            int median = 0;
            for (int v = 0; v < 256; v++) {
                seen += histogram[v];
                if (seen > rank) {
                    median = v;
                    break;
                }
            }
            return median / 255f;
        }

        @Override
        public String describe() {
            return "mask";
        }
    }

    static final class PointFocus extends Focus {
        final int x;
        final int y;

        PointFocus(int x, int y) {
            this.x = x;
            this.y = y;
        }

        @Override
        public void check(int width, int height) {
            if (x < 0 || y < 0 || x >= width || y >= height) {
                throw new InputException("focus point: (" + x + ", " + y + ") lies outside the " + width + "x" + height
                        + " (WxH) image; x must be in 0.." + (width - 1) + ", y in 0.." + (height - 1));
            }
        }

        @Override
        public float value(byte[] depthU8, int width, int height) {
            check(width, height);
            return (depthU8[y * width + x] & 0xFF) / 255f;
        }

        @Override
        public String describe() {
            return "point " + x + "," + y;
        }
    }
}

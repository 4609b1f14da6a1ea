package com.magicbokeh.core;

/** An 8-bit sRGB photo, rows top to bottom, pixels interleaved R, G, B (HWC), as the reference reads it. */
public final class RgbImage {
    public final int width;
    public final int height;
    /** {@code height * width * 3} bytes, read as unsigned. */
    public final byte[] pixels;

    public RgbImage(int width, int height, byte[] pixels) {
        if (width < 1 || height < 1) {
            throw new InputException("image: empty image of " + width + "x" + height + " (WxH)");
        }
        if (pixels.length != (long) width * height * 3) {
            throw new InputException("image: " + pixels.length + " bytes do not hold a " + width + "x" + height
                    + " RGB image (" + (long) width * height * 3 + " bytes)");
        }
        this.width = width;
        this.height = height;
        this.pixels = pixels;
    }

    /** Channel {@code c} of pixel (row {@code y}, column {@code x}), 0..255. */
    public int get(int y, int x, int c) {
        return pixels[(y * width + x) * 3 + c] & 0xFF;
    }
}

package com.magicbokeh.app;

import android.graphics.Bitmap;
import com.magicbokeh.core.RgbImage;

/** ARGB Bitmaps <-> core's 8-bit RGB (alpha dropped, as the reference does). */
final class Bitmaps {
    private Bitmaps() {
    }

    static RgbImage toRgb(Bitmap bitmap) {
        int w = bitmap.getWidth(), h = bitmap.getHeight();
        int[] argb = new int[w * h];
        bitmap.getPixels(argb, 0, w, 0, 0, w, h);
        byte[] rgb = new byte[w * h * 3];
        for (int i = 0; i < argb.length; i++) {
            rgb[i * 3] = (byte) (argb[i] >> 16);
            rgb[i * 3 + 1] = (byte) (argb[i] >> 8);
            rgb[i * 3 + 2] = (byte) argb[i];
        }
        return new RgbImage(w, h, rgb);
    }

    static Bitmap toBitmap(RgbImage image) {
        int[] argb = new int[image.width * image.height];
        for (int i = 0; i < argb.length; i++) {
            argb[i] = 0xFF000000 | (image.pixels[i * 3] & 0xFF) << 16 | (image.pixels[i * 3 + 1] & 0xFF) << 8
                    | (image.pixels[i * 3 + 2] & 0xFF);
        }
        return Bitmap.createBitmap(argb, image.width, image.height, Bitmap.Config.ARGB_8888);
    }
}

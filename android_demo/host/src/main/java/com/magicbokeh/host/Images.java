package com.magicbokeh.host;

import com.magicbokeh.core.InputException;
import com.magicbokeh.core.RgbImage;
import java.awt.image.BufferedImage;
import java.awt.image.IndexColorModel;
import java.awt.image.Raster;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Map;
import javax.imageio.IIOImage;
import javax.imageio.ImageIO;
import javax.imageio.ImageTypeSpecifier;
import javax.imageio.ImageWriter;
import javax.imageio.metadata.IIOMetadata;
import javax.imageio.metadata.IIOMetadataNode;
import javax.imageio.stream.ImageOutputStream;

/**
 * Photo and mask files on the host, read from the raster's samples (never through getRGB, whose
 * colour conversion would change grey values): 8-bit RGB / RGBA (alpha dropped), grey (replicated),
 * palette. The mask rule is the reference's: PIL's greyscale value non-zero.
 */
public final class Images {
    private Images() {
    }

    private static BufferedImage read(Path path, String what) {
        if (!Files.isRegularFile(path)) throw new InputException(what + " file not found: " + path);
        try {
            BufferedImage image = ImageIO.read(path.toFile());
            if (image == null) throw new InputException("cannot read " + what + " " + path + ": not a PNG or JPEG image");
            return image;
        } catch (IOException ex) {
            throw new InputException("cannot read " + what + " " + path + ": " + ex.getMessage());
        }
    }

    /** Pixel (x, y) as {r, g, b} 0..255, exactly as stored. */
    private static int[] rgbAt(BufferedImage image, Raster raster, int x, int y) {
        if (image.getColorModel() instanceof IndexColorModel) {
            IndexColorModel icm = (IndexColorModel) image.getColorModel();
            int index = raster.getSample(x, y, 0);
            return new int[] {icm.getRed(index), icm.getGreen(index), icm.getBlue(index)};
        }
        int bands = raster.getNumBands();
        if (bands == 1 || bands == 2) {
            int v = raster.getSample(x, y, 0);
            return new int[] {v, v, v};
        }
        return new int[] {raster.getSample(x, y, 0), raster.getSample(x, y, 1), raster.getSample(x, y, 2)};
    }

    private static void checkDepth(BufferedImage image, Path path, String what) {
        if (image.getColorModel() instanceof IndexColorModel) return;
        for (int size : image.getSampleModel().getSampleSize()) {
            if (size != 8) {
                throw new InputException(what + " " + path + ": " + size + "-bit samples are not supported; give an 8-bit "
                        + "RGB, RGBA or greyscale image");
            }
        }
        int bands = image.getRaster().getNumBands();
        if (bands < 1 || bands > 4) throw new InputException(what + " " + path + ": unsupported " + bands + "-band image");
    }

    public static RgbImage readPhoto(Path path) {
        BufferedImage image = read(path, "image");
        checkDepth(image, path, "image");
        Raster raster = image.getRaster();
        int w = image.getWidth(), h = image.getHeight();
        byte[] pixels = new byte[w * h * 3];
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                int[] rgb = rgbAt(image, raster, x, y);
                for (int c = 0; c < 3; c++) pixels[(y * w + x) * 3 + c] = (byte) rgb[c];
            }
        }
        return new RgbImage(w, h, pixels);
    }

    /** A focus mask: 1 where PIL's greyscale ("L") value is non-zero, else 0. */
    public static byte[] readMask(Path path, int[] sizeOut) {
        BufferedImage image = read(path, "mask");
        checkDepth(image, path, "mask");
        Raster raster = image.getRaster();
        int w = image.getWidth(), h = image.getHeight();
        byte[] mask = new byte[w * h];
        boolean grey = !(image.getColorModel() instanceof IndexColorModel) && raster.getNumBands() <= 2;
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                int value;
                if (grey) {
                    value = raster.getSample(x, y, 0);
                } else {
                    int[] rgb = rgbAt(image, raster, x, y);
                    value = (rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16;  // PIL's L
                }
                mask[y * w + x] = (byte) (value != 0 ? 1 : 0);
            }
        }
        sizeOut[0] = w;
        sizeOut[1] = h;
        return mask;
    }

    /** Write an RGB PNG with tEXt chunks (e.g. the model label), atomically (temp file, then rename). */
    public static void writePng(RgbImage image, Path out, Map<String, String> text) throws IOException {
        BufferedImage buffered = new BufferedImage(image.width, image.height, BufferedImage.TYPE_3BYTE_BGR);
        var raster = buffered.getRaster();
        for (int y = 0; y < image.height; y++) {
            for (int x = 0; x < image.width; x++) {
                for (int c = 0; c < 3; c++) raster.setSample(x, y, c, image.get(y, x, c));
            }
        }
        ImageWriter writer = ImageIO.getImageWritersByFormatName("png").next();
        IIOMetadata metadata = writer.getDefaultImageMetadata(ImageTypeSpecifier.createFromRenderedImage(buffered), null);
        IIOMetadataNode textNode = new IIOMetadataNode("tEXt");
        for (Map.Entry<String, String> e : text.entrySet()) {
            IIOMetadataNode entry = new IIOMetadataNode("tEXtEntry");
            entry.setAttribute("keyword", e.getKey());
            entry.setAttribute("value", e.getValue());
            textNode.appendChild(entry);
        }
        IIOMetadataNode root = new IIOMetadataNode("javax_imageio_png_1.0");
        root.appendChild(textNode);
        metadata.mergeTree("javax_imageio_png_1.0", root);
        Path parent = out.toAbsolutePath().getParent();
        Files.createDirectories(parent);
        Path tmp = Files.createTempFile(parent, ".tmp-", ".png");
        try {
            try (ImageOutputStream stream = ImageIO.createImageOutputStream(tmp.toFile())) {
                writer.setOutput(stream);
                writer.write(null, new IIOImage(buffered, null, metadata), null);
            } finally {
                writer.dispose();
            }
            Files.move(tmp, out, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    /** Write text atomically. */
    public static void writeText(Path out, String text) throws IOException {
        Path parent = out.toAbsolutePath().getParent();
        Files.createDirectories(parent);
        Path tmp = Files.createTempFile(parent, ".tmp-", ".json");
        try {
            Files.write(tmp, text.getBytes(java.nio.charset.StandardCharsets.UTF_8));
            Files.move(tmp, out, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }
}

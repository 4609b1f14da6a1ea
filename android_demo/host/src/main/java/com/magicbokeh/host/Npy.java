package com.magicbokeh.host;

import com.magicbokeh.core.DepthMap;
import com.magicbokeh.core.InputException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Reads a depth map saved by {@code numpy.save}: little-endian float32 or float64, C order, shape
 * (H, W) or with one singleton leading / trailing axis (squeezed, as the reference does).
 */
public final class Npy {
    private static final Pattern DESCR = Pattern.compile("'descr'\\s*:\\s*'([^']*)'");
    private static final Pattern FORTRAN = Pattern.compile("'fortran_order'\\s*:\\s*(True|False)");
    private static final Pattern SHAPE = Pattern.compile("'shape'\\s*:\\s*\\(([^)]*)\\)");

    private Npy() {
    }

    public static DepthMap readDepth(Path path) {
        if (!Files.isRegularFile(path)) throw new InputException("depth file not found: " + path);
        byte[] bytes;
        try {
            bytes = Files.readAllBytes(path);
        } catch (IOException ex) {
            throw new InputException("cannot read depth map " + path + ": " + ex.getMessage());
        }
        ByteBuffer buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        if (bytes.length < 10 || (bytes[0] & 0xFF) != 0x93 || !new String(bytes, 1, 5, StandardCharsets.ISO_8859_1).equals("NUMPY")) {
            throw new InputException("depth map " + path + " is not a .npy file (numpy.save writes one)");
        }
        int major = bytes[6];
        int headerLength;
        int offset;
        if (major == 1) {
            headerLength = buffer.getShort(8) & 0xFFFF;
            offset = 10;
        } else if (major == 2 || major == 3) {
            headerLength = buffer.getInt(8);
            offset = 12;
        } else {
            throw new InputException("depth map " + path + ": unknown .npy version " + major);
        }
        String header = new String(bytes, offset, headerLength, major == 3 ? StandardCharsets.UTF_8 : StandardCharsets.ISO_8859_1);
        Matcher descr = DESCR.matcher(header), fortran = FORTRAN.matcher(header), shapeMatch = SHAPE.matcher(header);
        if (!descr.find() || !fortran.find() || !shapeMatch.find()) {
            throw new InputException("depth map " + path + ": unreadable .npy header " + header.trim());
        }
        String type = descr.group(1);
        if (!type.equals("<f4") && !type.equals("<f8")) {
            throw new InputException("depth map " + path + ": expected a little-endian float32 or float64 map in [0, 1], got dtype "
                    + type + " (convert integer maps yourself, e.g. depth / 255 for 8-bit)");
        }
        List<Integer> shape = new ArrayList<>();
        for (String part : shapeMatch.group(1).split(",")) {
            if (!part.isBlank()) shape.add(Integer.parseInt(part.trim()));
        }
        if (shape.size() == 3 && (shape.get(0) == 1 || shape.get(2) == 1)) shape.remove(shape.get(0) == 1 ? 0 : 2);
        if (shape.size() != 2) throw new InputException("depth map " + path + ": expected an (H, W) depth map, got shape " + shape);
        if (fortran.group(1).equals("True") && shape.get(0) > 1 && shape.get(1) > 1) {
            throw new InputException("depth map " + path + ": Fortran-ordered arrays are not supported (save np.ascontiguousarray(depth))");
        }
        int height = shape.get(0), width = shape.get(1);
        int start = offset + headerLength;
        int size = type.equals("<f4") ? 4 : 8;
        if (bytes.length - start != (long) height * width * size) {
            throw new InputException("depth map " + path + ": " + (bytes.length - start) + " data bytes, shape " + shape + " needs "
                    + (long) height * width * size);
        }
        buffer.position(start);
        try {
            if (size == 4) {
                float[] values = new float[height * width];
                buffer.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(values);
                return DepthMap.ofFloats(width, height, values);
            }
            double[] values = new double[height * width];
            buffer.slice().order(ByteOrder.LITTLE_ENDIAN).asDoubleBuffer().get(values);
            return DepthMap.ofDoubles(width, height, values);
        } catch (InputException ex) {
            throw new InputException("depth map " + path + ": " + ex.getMessage());
        }
    }
}

package com.magicbokeh.core;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * A golden-vector folder written by {@code python -m runtime_py golden} (format
 * {@code magicbokeh-golden} version 1, docs/golden_format.md): golden.json plus raw little-endian
 * arrays. Arrays are read on demand, so a test holds only what it compares.
 */
public final class Golden {
    public static final String SCHEMA = "magicbokeh-golden";
    public static final int SCHEMA_VERSION = 1;

    public final Path folder;
    public final Map<String, Object> index;
    public final ModelConfig config;
    public final int height;
    public final int width;
    public final int k;
    /** "mask" or "point". */
    public final String focusMode;
    public final int focusX;
    public final int focusY;
    public final int focusValueBits;
    public final int padRows;
    public final int padCols;
    public final List<TilePlan.Box> boxes;
    /** Per tile (plan order): the array names of rgb, defocus, in_focus, latent, x0, decoded, weight. */
    public final List<Map<String, Object>> tileArrays;

    private Golden(Path folder, Map<String, Object> index) {
        this.folder = folder;
        this.index = index;
        String where = "golden.json";
        Object schema = index.get("schema");
        if (!SCHEMA.equals(schema)) {
            throw new BokehException(folder + ": not a golden-vector folder (schema " + schema + ", expected " + SCHEMA + ")");
        }
        Object version = index.get("schema_version");
        if (!(version instanceof Long) || (Long) version != SCHEMA_VERSION) {
            throw new BokehException(folder + ": golden schema version " + version + " is not supported (this reader reads "
                    + SCHEMA_VERSION + ")");
        }
        config = ModelConfig.fromGoldenConfig(Json.object(Json.require(index, "config", where), "config"));
        Map<String, Object> input = Json.object(Json.require(index, "input", where), "input");
        height = (int) Json.integer(input.get("height"), "input.height");
        width = (int) Json.integer(input.get("width"), "input.width");
        k = (int) Json.integer(input.get("K"), "input.K");
        Map<String, Object> focus = Json.object(input.get("focus"), "input.focus");
        focusMode = Json.string(focus.get("mode"), "input.focus.mode");
        focusX = focusMode.equals("point") ? (int) Json.integer(focus.get("x"), "input.focus.x") : -1;
        focusY = focusMode.equals("point") ? (int) Json.integer(focus.get("y"), "input.focus.y") : -1;
        focusValueBits = (int) Json.integer(Json.require(index, "focus_value_bits", where), "focus_value_bits");
        int[] padding = Json.intArray(Json.require(index, "padding", where), "padding");
        padRows = padding[0];
        padCols = padding[1];
        List<TilePlan.Box> out = new ArrayList<>();
        Map<String, Object> plan = Json.object(Json.require(index, "plan", where), "plan");
        for (Object b : Json.array(plan.get("boxes"), "plan.boxes")) {
            Map<String, Object> box = Json.object(b, "plan.boxes[]");
            out.add(new TilePlan.Box((int) Json.integer(box.get("index"), "index"), (int) Json.integer(box.get("top"), "top"),
                    (int) Json.integer(box.get("left"), "left"), (int) Json.integer(box.get("size"), "size"),
                    Json.string(box.get("kind"), "kind")));
        }
        boxes = Collections.unmodifiableList(out);
        List<Map<String, Object>> tiles = new ArrayList<>();
        for (Object t : Json.array(Json.require(index, "tiles", where), "tiles")) {
            tiles.add(Json.object(Json.object(t, "tiles[]").get("arrays"), "tiles[].arrays"));
        }
        tileArrays = Collections.unmodifiableList(tiles);
    }

    public static Golden read(Path folder) {
        Path file = folder.resolve("golden.json");
        if (!Files.isRegularFile(file)) {
            throw new BokehException(folder + " has no golden.json: not a golden folder, or one that was not finished");
        }
        try {
            return new Golden(folder, Json.object(Json.parse(new String(Files.readAllBytes(file), StandardCharsets.UTF_8)), "golden.json"));
        } catch (IOException ex) {
            throw new BokehException("cannot read " + file + ": " + ex.getMessage());
        } catch (IllegalArgumentException ex) {
            throw new BokehException(file + ": " + ex.getMessage());
        }
    }

    /** The recorded array {@code name}'s metadata: dtype and shape. */
    public Map<String, Object> arrayInfo(String name) {
        Map<String, Object> arrays = Json.object(index.get("arrays"), "arrays");
        if (!arrays.containsKey(name)) throw new BokehException(folder + ": the golden has no array '" + name + "'");
        return Json.object(arrays.get(name), "arrays." + name);
    }

    public int[] shape(String name) {
        return Json.intArray(arrayInfo(name).get("shape"), "arrays." + name + ".shape");
    }

    private ByteBuffer raw(String name, String dtype, int elementSize) {
        Map<String, Object> info = arrayInfo(name);
        String actual = Json.string(info.get("dtype"), "dtype");
        if (!actual.equals(dtype)) throw new BokehException("golden array '" + name + "' is " + actual + ", not " + dtype);
        long count = 1;
        for (int d : shape(name)) count *= d;
        byte[] bytes;
        Path file = folder.resolve(Json.string(info.get("file"), "file"));
        try {
            bytes = Files.readAllBytes(file);
        } catch (IOException ex) {
            throw new BokehException("cannot read golden array " + file + ": " + ex.getMessage());
        }
        if (bytes.length != count * elementSize) {
            throw new BokehException(file + ": " + bytes.length + " bytes, the shape needs " + count * elementSize);
        }
        return ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
    }

    public float[] floats(String name) {
        ByteBuffer buffer = raw(name, "float32", 4);
        float[] out = new float[buffer.remaining() / 4];
        buffer.asFloatBuffer().get(out);
        return out;
    }

    public byte[] bytes(String name) {
        ByteBuffer buffer = raw(name, "uint8", 1);
        byte[] out = new byte[buffer.remaining()];
        buffer.get(out);
        return out;
    }

    /** The array name of tile {@code i}'s {@code what} (rgb, defocus, in_focus, latent, x0, decoded, weight). */
    public String tileArray(int i, String what) {
        return Json.string(tileArrays.get(i).get(what), "tiles[" + i + "].arrays." + what);
    }

    /** The recorded colour statistics (output before the fix, and input photo). */
    public PixelMath.ChannelStats[] colourStats() {
        Map<String, Object> fix = Json.object(index.get("colour_fix"), "colour_fix");
        return new PixelMath.ChannelStats[] {
            new PixelMath.ChannelStats(floats3(fix.get("mean_output")), floats3(fix.get("std_output"))),
            new PixelMath.ChannelStats(floats3(fix.get("mean_input")), floats3(fix.get("std_input"))),
        };
    }

    private static float[] floats3(Object value) {
        List<Object> list = Json.array(value, "colour_fix");
        float[] out = new float[list.size()];
        for (int i = 0; i < out.length; i++) out[i] = (float) Json.number(list.get(i), "colour_fix");
        return out;
    }

    /** The input photo, depth (float32) and focus exactly as the reference was given them. */
    public RgbImage image() {
        return new RgbImage(width, height, bytes("image_u8"));
    }

    public DepthMap depth() {
        return DepthMap.ofFloats(width, height, floats("depth"));
    }

    public Focus focus() {
        return focusMode.equals("mask") ? Focus.mask(bytes("mask"), width, height) : Focus.point(focusX, focusY);
    }
}

package com.magicbokeh.core;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

/**
 * An artifacts folder's {@code manifest.json} (schema {@code magicbokeh-artifacts} version 1, written
 * by the Python exporters, runtime_py/manifest.py): which file holds each component, its input and
 * output shapes, and the model configuration. {@link #read} checks the schema, that every listed
 * file exists and that its sha256 matches, so an app never runs a half-copied or edited model.
 */
public final class Manifest {
    public static final String SCHEMA = "magicbokeh-artifacts";
    public static final int SCHEMA_VERSION = 1;
    public static final String FILE_NAME = "manifest.json";
    /** A manifest is a few KB; the cap (the Python reader's) bounds what parsing may cost. */
    public static final long MAX_MANIFEST_BYTES = 4L << 20;

    /** One tensor of a component's signature. */
    public static final class TensorSpec {
        public final String name;
        public final int[] shape;

        TensorSpec(String name, int[] shape) {
            this.name = name;
            this.shape = shape;
        }

        public long elementCount() {
            long n = 1;
            for (int d : shape) n *= d;
            return n;
        }
    }

    /** One exported component (encoder, denoiser, decoder, depth, ...). */
    public static final class Component {
        public final String name;
        public final String file;
        public final Path path;
        public final List<TensorSpec> inputs;
        public final List<TensorSpec> outputs;
        public final String precision;
        public final String sha256;
        /** The delegate it was lowered to ({@code extra.delegate}; "xnnpack" when absent). */
        public final String delegate;
        /** The exporter's extra fields (e.g. QNN's {@code context_files}: SoC -> context-binary model). */
        public final Map<String, Object> extra;

        Component(String name, String file, Path path, List<TensorSpec> inputs, List<TensorSpec> outputs,
                  String precision, String sha256, String delegate, Map<String, Object> extra) {
            this.name = name;
            this.file = file;
            this.path = path;
            this.inputs = inputs;
            this.outputs = outputs;
            this.precision = precision;
            this.sha256 = sha256;
            this.delegate = delegate;
            this.extra = extra;
        }
    }

    public final Path folder;
    public final String backend;
    public final String precision;
    public final ModelConfig config;
    public final String weightsSha256;
    /** The model's provenance label: the manifest's string, or its object as one line of JSON (sorted keys). */
    public final String modelLabel;
    /** sha256 of manifest.json itself (goldens name the artifacts they came from by it). */
    public final String manifestSha256;
    public final Map<String, Component> components;

    private Manifest(Path folder, String backend, String precision, ModelConfig config, String weightsSha256,
                     String modelLabel, String manifestSha256, Map<String, Component> components) {
        this.folder = folder;
        this.backend = backend;
        this.precision = precision;
        this.config = config;
        this.weightsSha256 = weightsSha256;
        this.modelLabel = modelLabel;
        this.manifestSha256 = manifestSha256;
        this.components = Collections.unmodifiableMap(components);
    }

    /** Read and check {@code folder/manifest.json}; {@code verifyFiles} also hashes every component file. */
    public static Manifest read(Path folder, boolean verifyFiles) {
        if (!Files.isDirectory(folder)) {
            throw new ManifestException("artifacts folder " + folder + " does not exist");
        }
        Path file = folder.resolve(FILE_NAME);
        if (!Files.isRegularFile(file)) {
            throw new ManifestException(folder + " has no " + FILE_NAME
                    + ": not an artifacts folder, or an export that did not finish");
        }
        byte[] bytes;
        try {
            long size = Files.size(file);
            if (size > MAX_MANIFEST_BYTES) {
                throw new ManifestException(file + " is " + size + " bytes, more than the " + MAX_MANIFEST_BYTES
                        + " a manifest may have");
            }
            bytes = Files.readAllBytes(file);
        } catch (IOException ex) {
            throw new ManifestException("cannot read " + file + ": " + ex.getMessage());
        }
        Object root;
        try {
            root = Json.parse(new String(bytes, StandardCharsets.UTF_8));
        } catch (IllegalArgumentException ex) {
            throw new ManifestException(file + " is not valid JSON: " + ex.getMessage());
        }
        Manifest manifest;
        try {
            manifest = fromJson(folder, root, hex(digest(bytes)));
        } catch (IllegalArgumentException | ArithmeticException ex) {
            throw new ManifestException(file + " is malformed: " + ex.getMessage());
        }
        if (verifyFiles) {
            for (Component c : manifest.components.values()) {
                if (!Files.exists(c.path)) {
                    throw new ManifestException("component '" + c.name + "': " + c.path
                            + " is listed in the manifest but missing");
                }
                String actual = sha256(c.path);
                if (!actual.equals(c.sha256)) {
                    throw new ManifestException("component '" + c.name + "': " + c.path
                            + " does not match the manifest (sha256 " + actual.substring(0, 12)
                            + "..., manifest says " + shortHash(c.sha256) + "): the file changed after export");
                }
            }
        }
        return manifest;
    }

    private static Manifest fromJson(Path folder, Object rootValue, String manifestSha256) {
        Map<String, Object> root = Json.object(rootValue, "manifest");
        Object schema = root.get("schema");
        if (!SCHEMA.equals(schema)) {
            throw new ManifestException("not a MagicBokeh artifacts manifest (schema " + quoted(schema)
                    + ", expected \"" + SCHEMA + "\")");
        }
        Object version = root.get("schema_version");
        if (!(version instanceof Long) || (Long) version != SCHEMA_VERSION) {
            throw new ManifestException("manifest schema version " + version
                    + " is not supported (this app reads " + SCHEMA_VERSION + ")");
        }
        Map<String, Object> model = Json.object(Json.require(root, "model", "manifest"), "manifest.model");
        ModelConfig config = ModelConfig.fromManifestConfig(
                Json.object(Json.require(model, "config", "manifest.model"), "manifest.model.config"));
        Object label = model.get("label");
        String labelText = label == null ? "" : label instanceof String ? (String) label : Json.writeCompact(label);
        Map<String, Object> entries = Json.object(Json.require(root, "components", "manifest"), "manifest.components");
        Map<String, Component> components = new LinkedHashMap<>();
        for (Map.Entry<String, Object> e : entries.entrySet()) {
            String where = "manifest.components." + e.getKey();
            Map<String, Object> entry = Json.object(e.getValue(), where);
            String fileName = Json.string(Json.require(entry, "file", where), where + ".file");
            Path path = folder.resolve(fileName).normalize();
            if (!path.startsWith(folder.normalize())) {
                throw new ManifestException(where + ".file '" + fileName + "' points outside the artifacts folder");
            }
            Object extra = entry.get("extra");
            String delegate = "xnnpack";
            if (extra instanceof Map && ((Map<?, ?>) extra).get("delegate") instanceof String) {
                delegate = (String) ((Map<?, ?>) extra).get("delegate");
            }
            components.put(e.getKey(), new Component(
                    e.getKey(), fileName, path,
                    specs(Json.require(entry, "inputs", where), where + ".inputs"),
                    specs(Json.require(entry, "outputs", where), where + ".outputs"),
                    Json.string(Json.require(entry, "precision", where), where + ".precision"),
                    Json.string(Json.require(entry, "sha256", where), where + ".sha256"),
                    delegate, extra instanceof Map ? Json.object(extra, where + ".extra") : Collections.emptyMap()));
        }
        return new Manifest(folder, Json.string(Json.require(root, "backend", "manifest"), "manifest.backend"),
                Json.string(Json.require(root, "precision", "manifest"), "manifest.precision"), config,
                Json.string(Json.require(model, "weights_sha256", "manifest.model"), "manifest.model.weights_sha256"),
                labelText, manifestSha256, components);
    }

    private static List<TensorSpec> specs(Object value, String where) {
        List<TensorSpec> out = new ArrayList<>();
        List<Object> list = Json.array(value, where);
        for (int i = 0; i < list.size(); i++) {
            Map<String, Object> spec = Json.object(list.get(i), where + "[" + i + "]");
            Object name = spec.get("name");
            out.add(new TensorSpec(name instanceof String ? (String) name : "input" + i,
                    Json.intArray(Json.require(spec, "shape", where + "[" + i + "]"), where + "[" + i + "].shape")));
        }
        return Collections.unmodifiableList(out);
    }

    /** The component called {@code name}, or a ManifestException naming what the folder holds. */
    public Component component(String name) {
        Component c = components.get(name);
        if (c == null) {
            throw new ManifestException("artifacts in " + folder + " lack the '" + name + "' component; they hold "
                    + new ArrayList<>(components.keySet()));
        }
        return c;
    }

    /** Check that the encoder, denoiser and decoder exist and their shapes fit the config's tiles. */
    public void checkTileComponents() {
        int t = config.tile, c = config.latentChannels, lt = config.latentTile;
        expectShapes(component("encoder"), new int[][] {{1, 3, t, t}}, new int[] {1, c, lt, lt});
        expectShapes(component("denoiser"), new int[][] {{1, c, lt, lt}, {1, 1, t, t}, {1, 1, t, t}},
                new int[] {1, c, lt, lt});
        expectShapes(component("decoder"), new int[][] {{1, c, lt, lt}}, new int[] {1, 3, t, t});
    }

    private static void expectShapes(Component component, int[][] inputs, int[] output) {
        if (component.inputs.size() != inputs.length) {
            throw new ManifestException("component '" + component.name + "' takes " + component.inputs.size()
                    + " inputs in the manifest, the pipeline feeds " + inputs.length);
        }
        for (int i = 0; i < inputs.length; i++) {
            if (!java.util.Arrays.equals(component.inputs.get(i).shape, inputs[i])) {
                throw new ManifestException("component '" + component.name + "' input " + i + " has shape "
                        + java.util.Arrays.toString(component.inputs.get(i).shape) + " in the manifest, the config needs "
                        + java.util.Arrays.toString(inputs[i]));
            }
        }
        if (component.outputs.size() != 1 || !java.util.Arrays.equals(component.outputs.get(0).shape, output)) {
            throw new ManifestException("component '" + component.name + "' must have one output of shape "
                    + java.util.Arrays.toString(output) + " for this config");
        }
    }

    // -- hashing, as runtime_py/manifest.sha256_file ---------------------------------------------

    /**
     * sha256 of a file, or of a folder (an .mlpackage): over its files in the order of their sorted
     * relative paths (compared component by component, as Python sorts paths), each contributing its
     * relative path (UTF-8, '/'-separated) followed by its bytes.
     */
    public static String sha256(Path path) {
        MessageDigest md = newDigest();
        try {
            if (Files.isDirectory(path)) {
                List<Path> files;
                try (Stream<Path> walk = Files.walk(path)) {
                    files = new ArrayList<>(walk.filter(Files::isRegularFile).map(path::relativize).collect(java.util.stream.Collectors.toList()));
                }
                files.sort(Manifest::comparePathParts);
                for (Path rel : files) {
                    StringBuilder name = new StringBuilder();
                    for (int i = 0; i < rel.getNameCount(); i++) {
                        if (i > 0) name.append('/');
                        name.append(rel.getName(i));
                    }
                    md.update(name.toString().getBytes(StandardCharsets.UTF_8));
                    update(md, path.resolve(rel));
                }
            } else {
                update(md, path);
            }
        } catch (IOException ex) {
            throw new ManifestException("cannot read " + path + " to hash it: " + ex.getMessage());
        }
        return hex(md.digest());
    }

    private static int comparePathParts(Path a, Path b) {
        int n = Math.min(a.getNameCount(), b.getNameCount());
        for (int i = 0; i < n; i++) {
            int c = a.getName(i).toString().compareTo(b.getName(i).toString());
            if (c != 0) return c;
        }
        return Integer.compare(a.getNameCount(), b.getNameCount());
    }

    private static void update(MessageDigest md, Path file) throws IOException {
        byte[] buffer = new byte[1 << 20];
        try (InputStream in = Files.newInputStream(file)) {
            int n;
            while ((n = in.read(buffer)) > 0) md.update(buffer, 0, n);
        }
    }

    private static MessageDigest newDigest() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException ex) {
            throw new IllegalStateException("this JVM has no SHA-256", ex);
        }
    }

    static byte[] digest(byte[] bytes) {
        return newDigest().digest(bytes);
    }

    static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder(bytes.length * 2);
        for (byte b : bytes) out.append(Character.forDigit((b >> 4) & 15, 16)).append(Character.forDigit(b & 15, 16));
        return out.toString();
    }

    private static String shortHash(String hash) {
        return hash.length() > 12 ? hash.substring(0, 12) + "..." : hash;
    }

    private static String quoted(Object value) {
        return value instanceof String ? "\"" + value + "\"" : String.valueOf(value);
    }
}

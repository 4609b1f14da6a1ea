package com.magicbokeh.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Manifest reading and validation on a synthetic artifacts folder (tiny config shapes). */
class ManifestTest {
    @TempDir
    Path dir;

    private static String spec(String name, String shape) {
        return "{\"name\": \"" + name + "\", \"shape\": " + shape + ", \"dtype\": \"float32\"}";
    }

    private static String component(String name, String file, String sha, String inputs, String output) {
        return "\"" + name + "\": {\"name\": \"" + name + "\", \"file\": \"" + file + "\", \"inputs\": [" + inputs
                + "], \"outputs\": [" + spec("out", output) + "], \"precision\": \"fp32\", \"sha256\": \"" + sha
                + "\", \"bytes\": 3, \"extra\": {\"delegate\": \"xnnpack\"}}";
    }

    /** Write a manifest over three small files; {@code edit} rewrites its text before it is saved. */
    private Path artifacts(java.util.function.UnaryOperator<String> edit, boolean withDecoder) throws IOException {
        String[] names = {"encoder", "denoiser", "decoder"};
        for (String n : names) Files.write(dir.resolve(n + ".pte"), n.getBytes(StandardCharsets.UTF_8));
        String t = "[1, 3, 128, 128]", lat = "[1, 4, 16, 16]", map = "[1, 1, 128, 128]";
        StringBuilder comps = new StringBuilder();
        comps.append(component("encoder", "encoder.pte", Manifest.sha256(dir.resolve("encoder.pte")), spec("rgb", t), lat));
        comps.append(", ").append(component("denoiser", "denoiser.pte", Manifest.sha256(dir.resolve("denoiser.pte")),
                spec("latent", lat) + ", " + spec("defocus", map) + ", " + spec("in_focus", map), lat));
        if (withDecoder) {
            comps.append(", ").append(component("decoder", "decoder.pte", Manifest.sha256(dir.resolve("decoder.pte")),
                    spec("x0", lat), t));
        }
        String text = "{\"schema\": \"magicbokeh-artifacts\", \"schema_version\": 1, \"backend\": \"executorch\", "
                + "\"precision\": \"fp32\", \"model\": {\"config\": {\"name\": \"tiny\", \"tile\": 128, \"stride\": 64, "
                + "\"latent_channels\": 4, \"vae_block_out_channels\": [8, 16, 16, 16], \"defocus_in_focus_threshold\": 0.1}, "
                + "\"weights_sha256\": \"ab\", \"label\": {\"kind\": \"test\"}}, \"components\": {" + comps + "}}";
        Files.write(dir.resolve("manifest.json"), edit.apply(text).getBytes(StandardCharsets.UTF_8));
        return dir;
    }

    @Test
    void readsAValidManifestAndItsTileComponents() throws IOException {
        Manifest m = Manifest.read(artifacts(s -> s, true), true);
        assertEquals(128, m.config.tile);
        assertEquals(16, m.config.latentTile);
        assertEquals(0.1f, m.config.inFocusThreshold);
        assertEquals(3, m.components.size());
        assertTrue(m.modelLabel.contains("\"kind\": \"test\""), m.modelLabel);
        m.checkTileComponents();
    }

    @Test
    void fileChangedAfterExportIsRefused() throws IOException {
        Path folder = artifacts(s -> s, true);
        Files.write(folder.resolve("denoiser.pte"), "tampered".getBytes(StandardCharsets.UTF_8));
        ManifestException ex = assertThrows(ManifestException.class, () -> Manifest.read(folder, true));
        assertTrue(ex.getMessage().contains("'denoiser'") && ex.getMessage().contains("does not match the manifest"),
                ex.getMessage());
    }

    @Test
    void otherSchemaIsRefused() throws IOException {
        Path folder = artifacts(s -> s.replace("magicbokeh-artifacts", "something-else"), true);
        ManifestException ex = assertThrows(ManifestException.class, () -> Manifest.read(folder, true));
        assertTrue(ex.getMessage().contains("not a MagicBokeh artifacts manifest"), ex.getMessage());
    }

    @Test
    void otherSchemaVersionIsRefused() throws IOException {
        Path folder = artifacts(s -> s.replace("\"schema_version\": 1", "\"schema_version\": 2"), true);
        ManifestException ex = assertThrows(ManifestException.class, () -> Manifest.read(folder, true));
        assertTrue(ex.getMessage().contains("schema version 2 is not supported"), ex.getMessage());
    }

    @Test
    void missingComponentFileIsRefused() throws IOException {
        Path folder = artifacts(s -> s, true);
        Files.delete(folder.resolve("decoder.pte"));
        ManifestException ex = assertThrows(ManifestException.class, () -> Manifest.read(folder, true));
        assertTrue(ex.getMessage().contains("listed in the manifest but missing"), ex.getMessage());
    }

    @Test
    void missingComponentIsRefused() throws IOException {
        Manifest m = Manifest.read(artifacts(s -> s, false), true);
        ManifestException ex = assertThrows(ManifestException.class, m::checkTileComponents);
        assertTrue(ex.getMessage().contains("lack the 'decoder' component"), ex.getMessage());
    }

    @Test
    void shapesThatDoNotFitTheConfigAreRefused() throws IOException {
        Manifest m = Manifest.read(artifacts(s -> s.replace("\"tile\": 128", "\"tile\": 256"), true), true);
        ManifestException ex = assertThrows(ManifestException.class, m::checkTileComponents);
        assertTrue(ex.getMessage().contains("input 0 has shape [1, 3, 128, 128]"), ex.getMessage());
    }

    @Test
    void notJsonIsRefused() throws IOException {
        Path folder = artifacts(s -> s.substring(0, s.length() / 2), true);
        ManifestException ex = assertThrows(ManifestException.class, () -> Manifest.read(folder, true));
        assertTrue(ex.getMessage().contains("not valid JSON"), ex.getMessage());
    }

    /** A folder (an .mlpackage) hashes as runtime_py.manifest.sha256_file does; the expected value is Python's. */
    @Test
    void folderHashEqualsPythonsSha256File() throws IOException {
        Path fixture = GoldenCheck.folder("hash_fixture");
        String expected = new String(Files.readAllBytes(fixture.resolve("sha256.txt")), StandardCharsets.UTF_8).trim();
        assertEquals(expected, Manifest.sha256(fixture.resolve("model.mlpackage")));
    }

    @Test
    void aManifestWhoseComponentsCarryPartsStillReads() throws IOException {
        // A QNN export lists a split component's files under "parts" (runtime_py/manifest.py); this
        // reader takes the keys it knows and must not be upset by that one.
        String parts = ", \"parts\": [{\"index\": 0, \"file\": \"denoiser.pte\", \"inputs\": [{\"name\": \"latent\"}], "
                + "\"outputs\": [{\"name\": \"out\"}], \"sha256\": \"00\", \"bytes\": 3, \"context_files\": {}}]}";
        Path folder = artifacts(s -> s.replace("\"extra\": {\"delegate\": \"xnnpack\"}}",
                "\"extra\": {\"delegate\": \"xnnpack\"}" + parts), true);
        assertTrue(new String(Files.readAllBytes(folder.resolve("manifest.json")), StandardCharsets.UTF_8)
                .contains("\"parts\""));
        Manifest m = Manifest.read(folder, true);
        assertEquals(3, m.components.size());
        m.checkTileComponents();
    }
}

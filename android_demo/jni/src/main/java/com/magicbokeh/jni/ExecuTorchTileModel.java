package com.magicbokeh.jni;

import com.magicbokeh.core.Manifest;
import com.magicbokeh.core.ManifestException;
import com.magicbokeh.core.TileModel;
import java.io.FileNotFoundException;
import java.util.Arrays;

/**
 * The {@link TileModel} over an ExecuTorch artifacts folder: the manifest's encoder, denoiser and
 * decoder {@code .pte} files, each checked against the manifest (hash, shapes) before loading and
 * against the program's own input shapes after.
 */
public final class ExecuTorchTileModel implements TileModel {
    private final Manifest manifest;
    private final ExecuTorchComponent encoder;
    private final ExecuTorchComponent denoiser;
    private final ExecuTorchComponent decoder;

    private ExecuTorchTileModel(Manifest manifest, ExecuTorchComponent encoder, ExecuTorchComponent denoiser,
                                ExecuTorchComponent decoder) {
        this.manifest = manifest;
        this.encoder = encoder;
        this.denoiser = denoiser;
        this.decoder = decoder;
    }

    /** Load a checked manifest's tile components. */
    public static ExecuTorchTileModel load(Manifest manifest) throws FileNotFoundException {
        if (!manifest.backend.equals("executorch")) {
            throw new ManifestException("artifacts in " + manifest.folder + " were exported for the '" + manifest.backend
                    + "' backend, not ExecuTorch");
        }
        manifest.checkTileComponents();
        ExecuTorchComponent enc = null, den = null, dec = null;
        try {
            enc = loadOne(manifest, "encoder");
            den = loadOne(manifest, "denoiser");
            dec = loadOne(manifest, "decoder");
            return new ExecuTorchTileModel(manifest, enc, den, dec);
        } catch (RuntimeException | FileNotFoundException ex) {
            for (ExecuTorchComponent c : new ExecuTorchComponent[] {enc, den, dec}) {
                if (c != null) c.close();
            }
            throw ex;
        }
    }

    private static ExecuTorchComponent loadOne(Manifest manifest, String name) throws FileNotFoundException {
        Manifest.Component entry = manifest.component(name);
        if (!entry.delegate.equals("xnnpack") && !entry.delegate.equals("portable")) {
            throw new ManifestException("component '" + name + "' was lowered to the " + entry.delegate
                    + " delegate; this runner links XNNPACK only (use the " + entry.delegate + " artifacts on a device"
                    + " with that backend)");
        }
        ExecuTorchComponent component = ExecuTorchComponent.load(entry.path.toString(), name);
        int[][] actual = component.inputShapes();
        for (int i = 0; i < entry.inputs.size(); i++) {
            if (i >= actual.length || !Arrays.equals(actual[i], entry.inputs.get(i).shape)) {
                component.close();
                throw new ManifestException("component '" + name + "': the program's inputs " + Arrays.deepToString(actual)
                        + " differ from the manifest's input " + i + " " + Arrays.toString(entry.inputs.get(i).shape));
            }
        }
        return component;
    }

    @Override
    public float[] encode(float[] rgb) {
        return encoder.run(rgb);
    }

    @Override
    public float[] denoise(float[] latent, float[] defocus, float[] inFocus) {
        return denoiser.run(latent, defocus, inFocus);
    }

    @Override
    public float[] decode(float[] x0) {
        return decoder.run(x0);
    }

    @Override
    public String label() {
        return manifest.modelLabel;
    }

    public Manifest manifest() {
        return manifest;
    }

    /** The loaded component {@code name} (benchmarks time each one on its own). */
    public ExecuTorchComponent component(String name) {
        switch (name) {
            case "encoder": return encoder;
            case "denoiser": return denoiser;
            case "decoder": return decoder;
            default: throw new IllegalArgumentException("no tile component '" + name + "'");
        }
    }

    @Override
    public void close() {
        encoder.close();
        denoiser.close();
        decoder.close();
    }
}

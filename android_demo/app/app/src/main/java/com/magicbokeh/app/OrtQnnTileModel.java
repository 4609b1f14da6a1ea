package com.magicbokeh.app;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import com.magicbokeh.core.Manifest;
import com.magicbokeh.core.ManifestException;
import com.magicbokeh.core.TileModel;
import java.nio.FloatBuffer;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The tile components of a QNN artifacts folder (export/to_qnn.py) through ONNX Runtime's QNN
 * execution provider on the HTP: each component's precompiled context-binary model for the
 * phone's SoC ({@code extra.context_files}). Not compiled or run on the development machine.
 */
final class OrtQnnTileModel implements TileModel {
    private final Manifest manifest;
    private final OrtEnvironment env = OrtEnvironment.getEnvironment();
    private final Map<String, OrtSession> sessions = new LinkedHashMap<>();

    OrtQnnTileModel(Manifest manifest, String soc) throws OrtException {
        this.manifest = manifest;
        manifest.checkTileComponents();
        for (String name : new String[] {"encoder", "denoiser", "decoder"}) {
            Manifest.Component c = manifest.component(name);
            Object files = c.extra.get("context_files");
            if (!(files instanceof Map) || !((Map<?, ?>) files).containsKey(soc)) {
                throw new ManifestException("component '" + name + "' has no HTP context binary for " + soc
                        + " (export/to_qnn.py --soc " + soc + " writes one); it has " + files);
            }
            String file = (String) ((Map<?, ?>) files).get(soc);
            OrtSession.SessionOptions options = new OrtSession.SessionOptions();
            Map<String, String> qnn = new LinkedHashMap<>();
            qnn.put("backend_path", "libQnnHtp.so");
            qnn.put("htp_performance_mode", "burst");
            options.addQnn(qnn);
            // The export disabled CPU fallback: a node the HTP cannot run is an error, not a slow path.
            options.addConfigEntry("session.disable_cpu_ep_fallback", "1");
            sessions.put(name, env.createSession(manifest.folder.resolve(file).toString(), options));
        }
    }

    private float[] run(String name, float[]... inputs) {
        Manifest.Component c = manifest.component(name);
        OrtSession session = sessions.get(name);
        Map<String, OnnxTensor> feed = new LinkedHashMap<>();
        try {
            List<String> names = new java.util.ArrayList<>(session.getInputNames());
            for (int i = 0; i < inputs.length; i++) {
                long[] shape = new long[c.inputs.get(i).shape.length];
                for (int d = 0; d < shape.length; d++) shape[d] = c.inputs.get(i).shape[d];
                feed.put(names.get(i), OnnxTensor.createTensor(env, FloatBuffer.wrap(inputs[i]), shape));
            }
            try (OrtSession.Result result = session.run(feed)) {
                OnnxTensor out = (OnnxTensor) result.get(0);
                FloatBuffer buffer = out.getFloatBuffer();
                float[] values = new float[buffer.remaining()];
                buffer.get(values);
                return values;
            }
        } catch (OrtException ex) {
            throw new IllegalStateException("component '" + name + "' failed on the QNN HTP: " + ex.getMessage(), ex);
        } finally {
            for (OnnxTensor t : feed.values()) t.close();
        }
    }

    @Override
    public float[] encode(float[] rgb) {
        return run("encoder", rgb);
    }

    @Override
    public float[] denoise(float[] latent, float[] defocus, float[] inFocus) {
        return run("denoiser", latent, defocus, inFocus);
    }

    @Override
    public float[] decode(float[] x0) {
        return run("decoder", x0);
    }

    @Override
    public String label() {
        return manifest.modelLabel;
    }

    @Override
    public void close() {
        for (OrtSession s : sessions.values()) {
            try {
                s.close();
            } catch (OrtException ignored) {
                // closing is best effort
            }
        }
        sessions.clear();
    }
}

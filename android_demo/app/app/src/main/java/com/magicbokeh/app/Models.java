package com.magicbokeh.app;

import com.magicbokeh.core.DepthEstimator;
import com.magicbokeh.core.DepthMap;
import com.magicbokeh.core.Manifest;
import com.magicbokeh.core.ManifestException;
import com.magicbokeh.core.RgbImage;
import com.magicbokeh.core.TileModel;
import com.magicbokeh.jni.ExecuTorchComponent;
import com.magicbokeh.jni.ExecuTorchTileModel;
import java.io.File;

/** Opens the artifacts the user pushed to the app's files folder: the manifest, the tile model, depth. */
final class Models {
    private Models() {
    }

    /** Where to put an artifacts folder: {@code adb push DIR /sdcard/Android/data/com.magicbokeh.app/files/artifacts}. */
    static Manifest readManifest(File artifacts) {
        return Manifest.read(artifacts.toPath(), true);
    }

    /** ExecuTorch (XNNPACK) through the JNI runner, or ONNX Runtime QNN on the HTP, as the manifest says. */
    static TileModel openTileModel(Manifest manifest, String soc) throws Exception {
        switch (manifest.backend) {
            case "executorch":
                return ExecuTorchTileModel.load(manifest);
            case "qnn":
                return new OrtQnnTileModel(manifest, soc);
            default:
                throw new ManifestException("artifacts for the '" + manifest.backend + "' backend cannot run on Android "
                        + "(use the ExecuTorch XNNPACK or QNN artifacts)");
        }
    }

    /** Depth of a photo with the manifest's depth component (ExecuTorch artifacts exported with --components depth). */
    static DepthMap estimateDepth(Manifest manifest, RgbImage image) throws Exception {
        DepthEstimator estimator = DepthEstimator.forManifest(manifest);
        try (ExecuTorchComponent depth = ExecuTorchComponent.load(manifest.component("depth").path.toString(), "depth")) {
            return estimator.estimate(image, rgb -> depth.run(rgb));
        }
    }
}

plugins {
    id("com.android.application")
}

// Pinned versions. EXECUTORCH must equal the `executorch` wheel that exported the .pte files
// (pyproject.toml pins it; this project was tested with 1.5.1): a program from another runtime
// version may not load.
val executorchVersion = "1.5.1"
val cameraxVersion = "1.3.4"
val onnxruntimeQnnVersion = "1.22.0"

android {
    namespace = "com.magicbokeh.app"
    compileSdk = 34
    ndkVersion = "26.3.11579264"

    defaultConfig {
        applicationId = "com.magicbokeh.app"
        minSdk = 29  // MediaStore RELATIVE_PATH (save), java.nio.file (core)
        targetSdk = 34
        versionCode = 1
        versionName = "0.1"
        ndk { abiFilters += listOf("arm64-v8a") }
        externalNativeBuild {
            cmake {
                // An ExecuTorch install for arm64-v8a (headers in include/, libraries in lib/):
                // see android_demo/README.md "Building the app". Set it in local.properties as
                // executorch.root=/path/to/executorch-android-install
                val root = project.rootProject.file("local.properties").takeIf { it.exists() }
                    ?.readLines()?.firstOrNull { it.startsWith("executorch.root=") }?.substringAfter("=")
                    ?: System.getenv("EXECUTORCH_ROOT") ?: ""
                arguments += listOf("-DEXECUTORCH_ROOT=$root", "-DANDROID_STL=c++_shared")
            }
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    sourceSets {
        getByName("main") {
            // The same Java sources the host tests compile (android_demo/core, android_demo/jni).
            java.srcDirs("src/main/java", "../../core/src/main/java", "../../jni/src/main/java")
        }
    }

    externalNativeBuild {
        cmake {
            path = file("../../jni/CMakeLists.txt")
            version = "3.22.1"
        }
    }

    packaging {
        // ExecuTorch's AAR and the runner may both carry libc++_shared.so.
        jniLibs.pickFirsts += listOf("**/libc++_shared.so")
    }
}

dependencies {
    // ExecuTorch's Android library: its runtime (with the XNNPACK delegate) for the depth and tile
    // programs, and org.pytorch.executorch.Module for quick experiments.
    implementation("org.pytorch:executorch-android:$executorchVersion")
    // CameraX: preview + still capture.
    implementation("androidx.camera:camera-core:$cameraxVersion")
    implementation("androidx.camera:camera-camera2:$cameraxVersion")
    implementation("androidx.camera:camera-lifecycle:$cameraxVersion")
    implementation("androidx.camera:camera-view:$cameraxVersion")
    // ONNX Runtime with the QNN execution provider, for the HTP context binaries export/to_qnn.py writes.
    implementation("com.microsoft.onnxruntime:onnxruntime-android-qnn:$onnxruntimeQnnVersion")
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.exifinterface:exifinterface:1.3.7")
}

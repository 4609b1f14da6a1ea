// The MagicBokeh Android demo: open this folder (android_demo/app) in Android Studio.
// Sources of the pipeline live beside it and are compiled into the app:
//   ../core  (plain Java: manifest, maps, tiles, blending, colour fix)   -> app/build.gradle.kts sourceSets
//   ../jni   (C++ ExecuTorch runner + its Java side)                    -> externalNativeBuild
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "MagicBokehDemo"
include(":app")

// swift-tools-version: 6.0
// MagicBokeh on Apple devices: the pipeline around the exported Core ML packages.
//
// Layout after apple/ml-stable-diffusion's package: one library target (the pipeline, and one
// type per Core ML component), one command-line target, one test target. No dependencies outside
// the toolchain, so `swift build` / `swift test` work offline on Linux too (Core ML code is behind
// `#if canImport(CoreML)`). The SwiftUI app in App/ is an Xcode target over this library.

import PackageDescription

let package = Package(
    name: "MagicBokeh",
    platforms: [
        .macOS(.v14),
        .iOS(.v17),
    ],
    products: [
        .library(name: "MagicBokehKit", targets: ["MagicBokehKit"]),
        .executable(name: "magicbokeh-cli", targets: ["MagicBokehCLI"]),
    ],
    targets: [
        .target(name: "MagicBokehKit", path: "Sources/MagicBokehKit"),
        .executableTarget(name: "MagicBokehCLI", dependencies: ["MagicBokehKit"], path: "Sources/magicbokeh-cli"),
        .testTarget(name: "MagicBokehKitTests", dependencies: ["MagicBokehKit"], path: "Tests/MagicBokehKitTests"),
    ],
    swiftLanguageModes: [.v6]
)

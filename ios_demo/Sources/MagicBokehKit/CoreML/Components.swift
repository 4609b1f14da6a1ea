#if canImport(CoreML)
import CoreML
import Foundation

/// The three tile components as Core ML models, one type each (encoder, denoiser, decoder), and
/// the tile model that chains them for the pipeline.

/// The VAE encoder: (1, 3, T, T) rgb in [-1, 1] -> (1, C, t, t) latent.
public struct BokehEncoder: Sendable {
    public let model: ManagedComponentModel
    public func encode(rgb: [Float]) async throws -> [Float] { try await model.predict(["rgb": rgb]) }
}

/// The one-step denoiser (possibly chunked): latent, defocus, in-focus mask -> x0.
public struct BokehDenoiser: Sendable {
    public let model: ManagedComponentModel
    public func denoise(latent: [Float], defocus: [Float], inFocus: [Float]) async throws -> [Float] {
        try await model.predict(["latent": latent, "defocus": defocus, "in_focus": inFocus])
    }
}

/// The VAE decoder: (1, C, t, t) x0 -> (1, 3, T, T) rgb in about [-1, 1].
public struct BokehDecoder: Sendable {
    public let model: ManagedComponentModel
    public func decode(x0: [Float]) async throws -> [Float] { try await model.predict(["x0": x0]) }
}

/// The tile model on Core ML: encoder -> denoiser -> decoder, timing each.
public struct CoreMLTileModel: TileModel {
    public let artifacts: ArtifactsFolder
    public let encoder: BokehEncoder
    public let denoiser: BokehDenoiser
    public let decoder: BokehDecoder
    public var tileSize: Int { artifacts.manifest.model.config.tile }

    /// Wraps the components the (already checked) manifest names; nothing is loaded until
    /// `load()` or the first tile. Refuses a folder exported for another backend.
    public init(artifacts: ArtifactsFolder, computeUnits: ComputeUnitsChoice = .cpuAndNeuralEngine, compiledCache: URL? = nil) throws {
        guard artifacts.manifest.backend == "coreml" else {
            throw BokehError.manifest("\(artifacts.url.path) holds '\(artifacts.manifest.backend)' artifacts, not Core ML (export/to_coreml.py)")
        }
        try artifacts.manifest.validateComponents()
        func managed(_ name: String) -> ManagedComponentModel {
            ManagedComponentModel(name: name, entry: artifacts.manifest.components[name]!, folder: artifacts.url,
                                  computeUnits: computeUnits, compiledCache: compiledCache)
        }
        self.artifacts = artifacts
        encoder = BokehEncoder(model: managed("encoder"))
        denoiser = BokehDenoiser(model: managed("denoiser"))
        decoder = BokehDecoder(model: managed("decoder"))
    }

    /// Loads all three components; returns the load seconds per component.
    @discardableResult
    public func load() async throws -> [String: Double] {
        [
            "encoder": try await encoder.model.load(),
            "denoiser": try await denoiser.model.load(),
            "decoder": try await decoder.model.load(),
        ]
    }

    public func unload() {
        encoder.model.unload()
        denoiser.model.unload()
        decoder.model.unload()
    }

    public func run(_ input: TileInput) async throws -> TileOutput {
        var seconds: [String: Double] = [:]
        var started = Date()
        let latent = try await encoder.encode(rgb: input.rgb)
        seconds["encoder"] = Date().timeIntervalSince(started)
        started = Date()
        let x0 = try await denoiser.denoise(latent: latent, defocus: input.defocus, inFocus: input.inFocus)
        seconds["denoiser"] = Date().timeIntervalSince(started)
        started = Date()
        let decoded = try await decoder.decode(x0: x0)
        seconds["decoder"] = Date().timeIntervalSince(started)
        return TileOutput(latent: latent, x0: x0, decoded: decoded, seconds: seconds)
    }
}
#endif

#if canImport(CoreML)
/// The depth package (Depth Anything V2 at a static S x S input), when the artifacts hold one:
/// photo -> depth map in [0, 1] of the photo's size, with the host steps of DepthHost.swift.
public struct DepthEstimator: Sendable {
    public let model: ManagedComponentModel
    public let inputSize: Int

    /// nil when the manifest has no `depth` component (the user then supplies depth, e.g. from
    /// the camera's depth data).
    public init?(artifacts: ArtifactsFolder, computeUnits: ComputeUnitsChoice = .cpuAndNeuralEngine, compiledCache: URL? = nil) throws {
        guard let entry = artifacts.manifest.components["depth"] else { return nil }
        guard entry.inputs.count == 1, entry.inputs[0].shape.count == 4, entry.inputs[0].shape[2] == entry.inputs[0].shape[3] else {
            throw BokehError.manifest("component 'depth': expected one square (1, 3, S, S) input, got \(entry.inputs.map(\.shape))")
        }
        inputSize = entry.inputs[0].shape[3]
        model = ManagedComponentModel(name: "depth", entry: entry, folder: artifacts.url, computeUnits: computeUnits, compiledCache: compiledCache)
    }

    public func depth(for image: RGBImage) async throws -> FloatMap {
        let input = depthComponentInput(image, size: inputSize)
        let disparity = try await model.predict([model.entry.inputs[0].name: input])
        return try depthFromDisparity(disparity, size: inputSize, height: image.height, width: image.width)
    }
}
#endif

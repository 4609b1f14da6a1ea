import Foundation

/// The whole-image pipeline around a tile model: photo + depth + focus + K -> bokeh photo of the
/// same size, the reference pipeline (runtime_py/pipeline.py) step by step with only the model
/// call delegated to a `TileModel`.

/// What the tile model receives for one tile (all float32, NCHW, batch 1).
public struct TileInput: Sendable {
    public let box: TileBox
    /// (1, 3, T, T) in [-1, 1].
    public let rgb: [Float]
    /// (1, 1, T, T) defocus map D.
    public let defocus: [Float]
    /// (1, 1, T, T) in-focus mask m in {0, 1}.
    public let inFocus: [Float]
}

/// What the tile model returns: the decoded tile and, when it has them, the intermediates.
public struct TileOutput: Sendable {
    /// (1, C, t, t) encoder output, if the model exposes it.
    public var latent: [Float]?
    /// (1, C, t, t) denoiser output, if the model exposes it.
    public var x0: [Float]?
    /// (1, 3, T, T) decoder output in about [-1, 1].
    public var decoded: [Float]
    /// Seconds per component ("encoder", "denoiser", "decoder") for this tile.
    public var seconds: [String: Double]

    public init(latent: [Float]? = nil, x0: [Float]? = nil, decoded: [Float], seconds: [String: Double] = [:]) {
        self.latent = latent
        self.x0 = x0
        self.decoded = decoded
        self.seconds = seconds
    }
}

/// Runs one tile through encoder -> denoiser -> decoder. Implemented by the Core ML model on
/// Apple systems and by the golden replay everywhere. The renderer keeps one tile in flight.
public protocol TileModel: Sendable {
    /// The tile side in pixels the model was exported for.
    var tileSize: Int { get }
    func run(_ input: TileInput) async throws -> TileOutput
}

/// The configuration values the pipeline needs (a subset of the manifest's model config).
public struct PipelineConfig: Sendable, Equatable {
    public var name: String
    public var tile: Int
    public var stride: Int
    public var defocusInFocusThreshold: Float

    public init(name: String, tile: Int, stride: Int, defocusInFocusThreshold: Float) {
        self.name = name
        self.tile = tile
        self.stride = stride
        self.defocusInFocusThreshold = defocusInFocusThreshold
    }

    func validate() throws {
        guard tile > 0, stride > 0, stride <= tile else {
            throw BokehError.manifest("config \(name): tile \(tile) / stride \(stride) is not a valid tiling (need 0 < stride <= tile)")
        }
    }
}

/// Per-tile progress for a progress bar.
public struct RenderProgress: Sendable {
    public let completedTiles: Int
    public let totalTiles: Int
    public let box: TileBox
    public var fraction: Double { Double(completedTiles) / Double(totalTiles) }
}

/// Everything a render produced. Maps are of the padded size, images of the input size.
public struct RenderResult: Sendable {
    public let image: RGBImage
    /// The blended model output before the colour fix.
    public let raw: RGBImage
    public let depthU8: ByteMap
    public let focus: Float
    public let padding: (rows: Int, columns: Int)
    public let plan: TilePlan
    public let defocus: FloatMap
    public let inFocus: FloatMap
    /// (3, Hp, Wp) blended output in about [-1, 1], not clamped.
    public let blended: [Float]
    public let outputStatistics: ChannelStatistics
    public let inputStatistics: ChannelStatistics
    /// Summed seconds per component, plus "tiles" and "total".
    public let seconds: [String: Double]
}

/// Renders photos with one tile model and configuration.
public struct BokehRenderer: Sendable {
    public let config: PipelineConfig

    public init(config: PipelineConfig) throws {
        try config.validate()
        self.config = config
    }

    /// Checks everything about the inputs before any model call.
    public func validate(image: RGBImage, depth: FloatMap, focus: FocusSpec, K: Int) throws {
        guard image.channels == 3 else {
            throw BokehError.input("image: expected an RGB image (3 channels), got \(image.channels)")
        }
        try validateAperture(K)
        try validateDepth(depth, height: image.height, width: image.width)
        // Resolving the focus on a zero depth checks the mask's size and emptiness, or the point.
        _ = try resolveFocus(depthU8: ByteMap(height: image.height, width: image.width, repeating: 0), focus: focus)
    }

    /// Renders the bokeh version of `image`. Cancelling the calling task stops between tiles
    /// (throws `CancellationError`); `progress` is called after each tile.
    public func render(
        image: RGBImage, depth: FloatMap, focus: FocusSpec, K: Int,
        model: some TileModel,
        progress: (@Sendable (RenderProgress) -> Void)? = nil
    ) async throws -> RenderResult {
        let started = Date()
        try validate(image: image, depth: depth, focus: focus, K: K)
        guard model.tileSize == config.tile else {
            throw BokehError.model("the model takes \(model.tileSize)x\(model.tileSize) tiles but config \(config.name) tiles at \(config.tile)x\(config.tile)")
        }
        let depthU8 = depthToU8(depth)
        let f = try resolveFocus(depthU8: depthU8, focus: focus)
        let pad = tilePadding(height: image.height, width: image.width, tile: config.tile)
        let paddedDepth = depthU8.reflectPadded(rows: pad.rows, columns: pad.columns)
        let paddedImage = image.reflectPadded(rows: pad.rows, columns: pad.columns)
        let maps = try defocusMaps(depthU8: paddedDepth, focus: f, K: K, threshold: config.defocusInFocusThreshold)
        let plan = try TilePlan(height: paddedImage.height, width: paddedImage.width, tile: config.tile, stride: config.stride)

        var blender = TileBlender(plan: plan, channels: 3)
        var seconds: [String: Double] = ["encoder": 0, "denoiser": 0, "decoder": 0]
        let tilesStarted = Date()
        for box in plan.boxes {
            try Task.checkCancellation()
            let input = TileInput(box: box, rgb: modelRangeTile(paddedImage, box: box),
                                  defocus: mapTile(maps.defocus, box: box), inFocus: mapTile(maps.inFocus, box: box))
            let output = try await model.run(input)
            try blender.add(output.decoded, box: box)
            for (name, value) in output.seconds { seconds[name, default: 0] += value }
            progress?(RenderProgress(completedTiles: box.index + 1, totalTiles: plan.count, box: box))
        }
        seconds["tiles"] = Date().timeIntervalSince(tilesStarted)
        let blended = try blender.finish()
        let raw = modelRangeToU8(blended, planeHeight: plan.height, planeWidth: plan.width, height: image.height, width: image.width)
        let fixed = try colourFix(raw, reference: image)
        seconds["total"] = Date().timeIntervalSince(started)
        return RenderResult(image: fixed.image, raw: raw, depthU8: depthU8, focus: f, padding: pad, plan: plan,
                            defocus: maps.defocus, inFocus: maps.inFocus, blended: blended,
                            outputStatistics: fixed.output, inputStatistics: fixed.input, seconds: seconds)
    }
}

import Foundation

/// The artifacts manifest (`manifest.json`, format `magicbokeh-artifacts` version 1) that
/// runtime_py/manifest.py writes beside the exported components, decoded and checked.

public let manifestSchema = "magicbokeh-artifacts"
public let manifestSchemaVersion = 1
public let manifestFileName = "manifest.json"
/// The components one tile runs through, in order.
public let tileComponentNames = ["encoder", "denoiser", "decoder"]

/// One input or output of a component.
public struct TensorSpec: Codable, Sendable, Equatable {
    public var name: String
    public var shape: [Int]
    public var dtype: String
    public var valueRange: [Double]?
    public var layout: String?

    enum CodingKeys: String, CodingKey {
        case name, shape, dtype, layout
        case valueRange = "value_range"
    }

    public var elementCount: Int { shape.reduce(1, *) }
}

/// One package of a component split into chunks run in sequence, passing tensors by name.
public struct ChunkEntry: Codable, Sendable, Equatable {
    public var file: String
    public var inputs: [String]
    public var outputs: [String]
}

/// The exporter's notes on a component the apps need.
public struct ComponentExtra: Codable, Sendable, Equatable {
    public var format: String?
    /// "float16" or "float32": the packages' input and output type.
    public var ioDtype: String?
    public var computeUnits: String?
    public var chunks: [ChunkEntry]?

    enum CodingKeys: String, CodingKey {
        case format, chunks
        case ioDtype = "io_dtype"
        case computeUnits = "compute_units"
    }
}

/// One exported component.
public struct ComponentEntry: Codable, Sendable, Equatable {
    public var name: String
    public var file: String
    public var inputs: [TensorSpec]
    public var outputs: [TensorSpec]
    public var precision: String
    public var sha256: String
    public var bytes: Int
    public var extra: ComponentExtra?

    /// The packages to run in order: the chunks, or the one file.
    public var pieces: [ChunkEntry] {
        if let chunks = extra?.chunks, !chunks.isEmpty { return chunks }
        return [ChunkEntry(file: file, inputs: inputs.map(\.name), outputs: outputs.map(\.name))]
    }
}

/// The model configuration fields the pipeline and the shape checks need.
public struct ModelConfig: Codable, Sendable, Equatable {
    public var name: String
    public var tile: Int
    public var stride: Int
    public var latentChannels: Int
    public var vaeBlockOutChannels: [Int]
    public var defocusInFocusThreshold: Double

    enum CodingKeys: String, CodingKey {
        case name, tile, stride
        case latentChannels = "latent_channels"
        case vaeBlockOutChannels = "vae_block_out_channels"
        case defocusInFocusThreshold = "defocus_in_focus_threshold"
    }

    /// The VAE halves the resolution at each block but the last.
    public var latentTile: Int { tile >> max(0, vaeBlockOutChannels.count - 1) }

    public var pipelineConfig: PipelineConfig {
        PipelineConfig(name: name, tile: tile, stride: stride, defocusInFocusThreshold: Float(defocusInFocusThreshold))
    }
}

public struct ModelSection: Codable, Sendable, Equatable {
    public var config: ModelConfig
    public var weightsSha256: String
    public var label: JSONValue?

    enum CodingKeys: String, CodingKey {
        case config, label
        case weightsSha256 = "weights_sha256"
    }
}

/// `manifest.json`.
public struct ArtifactsManifest: Codable, Sendable, Equatable {
    public var schema: String
    public var schemaVersion: Int
    public var created: String?
    public var backend: String
    public var precision: String
    public var model: ModelSection
    public var components: [String: ComponentEntry]
    public var tools: JSONValue?
    public var extra: JSONValue?

    enum CodingKeys: String, CodingKey {
        case schema, created, backend, precision, model, components, tools, extra
        case schemaVersion = "schema_version"
    }

    /// The provenance label as one line of text (the exporter writes text or an object).
    public var modelLabel: String {
        switch model.label {
        case .string(let text)?: return text
        case .object(let object)?: return object["description"]?.stringValue ?? JSONValue.object(object).jsonText
        default: return "MagicBokeh \(model.config.name) (\(backend), \(precision))"
        }
    }
}

private struct SchemaHeader: Decodable {
    var schema: String?
    var schemaVersion: Int?
    enum CodingKeys: String, CodingKey {
        case schema
        case schemaVersion = "schema_version"
    }
}

/// An artifacts folder whose manifest was read and checked.
public struct ArtifactsFolder: Sendable {
    public let url: URL
    public let manifest: ArtifactsManifest

    /// Reads `folder/manifest.json` and checks the schema, the configuration, that the tile
    /// components are present with the shapes the configuration implies, and (with
    /// `verifyHashes`) that every file exists with the recorded sha256. An app that ships only
    /// compiled `.mlmodelc` folders passes `verifyHashes: false` (the hash is the package's).
    public init(url: URL, verifyHashes: Bool = true, backend: String? = nil) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw BokehError.manifest("artifacts folder \(url.path) does not exist")
        }
        let manifestURL = url.appendingPathComponent(manifestFileName)
        guard let data = FileManager.default.contents(atPath: manifestURL.path) else {
            throw BokehError.manifest("\(url.path) has no \(manifestFileName): not an artifacts folder, or an export that did not finish")
        }
        let manifest = try ArtifactsManifest.decode(data, source: manifestURL.path)
        if let backend, manifest.backend != backend {
            throw BokehError.manifest("artifacts were exported for backend '\(manifest.backend)', not '\(backend)'")
        }
        try manifest.validateComponents()
        if verifyHashes {
            for name in manifest.components.keys.sorted() {
                let entry = manifest.components[name]!
                let file = url.appendingPathComponent(entry.file)
                guard FileManager.default.fileExists(atPath: file.path) else {
                    throw BokehError.manifest("component '\(name)': \(file.path) is listed in the manifest but missing")
                }
                let digest = try sha256OfItem(at: file)
                guard digest == entry.sha256 else {
                    throw BokehError.manifest("component '\(name)': \(file.path) does not match the manifest (sha256 \(digest.prefix(12))..., manifest says \(entry.sha256.prefix(12))...): the file changed after export")
                }
            }
        }
        self.url = url
        self.manifest = manifest
    }
}

extension ArtifactsManifest {
    /// Decodes manifest JSON, checking the schema and version before the structure so that a
    /// foreign or newer file gets that reason rather than a missing-key message.
    public static func decode(_ data: Data, source: String = manifestFileName) throws -> ArtifactsManifest {
        let header: SchemaHeader
        do { header = try JSONDecoder().decode(SchemaHeader.self, from: data) } catch {
            throw BokehError.manifest("\(source) is not valid JSON")
        }
        guard header.schema == manifestSchema else {
            throw BokehError.manifest("\(source) is not a MagicBokeh artifacts manifest (schema '\(header.schema ?? "none")', expected '\(manifestSchema)')")
        }
        guard header.schemaVersion == manifestSchemaVersion else {
            throw BokehError.manifest("manifest schema version \(header.schemaVersion.map(String.init) ?? "none") is not supported (this app reads \(manifestSchemaVersion))")
        }
        do { return try JSONDecoder().decode(ArtifactsManifest.self, from: data) } catch {
            throw BokehError.manifest(describe(error, document: source))
        }
    }

    /// The configuration is a valid tiling and the three tile components are present with the
    /// inputs and outputs (names and shapes) the pipeline feeds and reads.
    public func validateComponents(required: [String] = tileComponentNames) throws {
        let c = model.config
        guard c.tile > 0, c.stride > 0, c.stride <= c.tile else {
            throw BokehError.manifest("config '\(c.name)': tile \(c.tile) / stride \(c.stride) is not a valid tiling")
        }
        guard c.latentChannels > 0, !c.vaeBlockOutChannels.isEmpty, c.latentTile > 0 else {
            throw BokehError.manifest("config '\(c.name)': latent channels \(c.latentChannels) / VAE blocks \(c.vaeBlockOutChannels) give no latent")
        }
        let missing = required.filter { components[$0] == nil }
        guard missing.isEmpty else {
            throw BokehError.manifest("artifacts lack components \(missing); they hold \(components.keys.sorted())")
        }
        let T = c.tile, t = c.latentTile, C = c.latentChannels
        let expected: [String: (inputs: [(String, [Int])], output: [Int])] = [
            "encoder": ([("rgb", [1, 3, T, T])], [1, C, t, t]),
            "denoiser": ([("latent", [1, C, t, t]), ("defocus", [1, 1, T, T]), ("in_focus", [1, 1, T, T])], [1, C, t, t]),
            "decoder": ([("x0", [1, C, t, t])], [1, 3, T, T]),
        ]
        for name in required {
            guard let entry = components[name], let want = expected[name] else { continue }
            let got = entry.inputs.map { ($0.name, $0.shape) }
            let shapesMatch = got.count == want.inputs.count && zip(got, want.inputs).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
            guard shapesMatch else {
                let gotText = got.map { "\($0.0)\($0.1)" }.joined(separator: ", ")
                let wantText = want.inputs.map { "\($0.0)\($0.1)" }.joined(separator: ", ")
                throw BokehError.manifest("component '\(name)': inputs \(gotText) do not fit config '\(c.name)' (expected \(wantText))")
            }
            guard entry.outputs.count == 1, entry.outputs[0].shape == want.output else {
                throw BokehError.manifest("component '\(name)': outputs \(entry.outputs.map(\.shape)) do not fit config '\(c.name)' (expected one output \(want.output))")
            }
            let produced = Set(entry.inputs.map(\.name)).union(entry.pieces.flatMap(\.outputs))
            for piece in entry.pieces {
                if let unknown = piece.inputs.first(where: { !produced.contains($0) }) {
                    throw BokehError.manifest("component '\(name)': chunk \(piece.file) takes '\(unknown)', which neither the inputs nor an earlier chunk provide")
                }
            }
            if !entry.pieces.flatMap(\.outputs).contains(entry.outputs[0].name) {
                throw BokehError.manifest("component '\(name)': no chunk produces the output '\(entry.outputs[0].name)'")
            }
        }
    }
}

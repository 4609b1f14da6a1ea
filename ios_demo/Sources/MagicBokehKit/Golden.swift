import Foundation

/// Reader of golden-vector folders (format `magicbokeh-golden` version 1, docs/golden_format.md):
/// every intermediate of one reference render, as one JSON index plus raw little-endian arrays.

public let goldenSchema = "magicbokeh-golden"
public let goldenSchemaVersion = 1

public struct GoldenArraySpec: Codable, Sendable {
    public var file: String
    public var dtype: String
    public var shape: [Int]
    public var count: Int { shape.reduce(1, *) }
}

public struct GoldenFocus: Codable, Sendable {
    public var mode: String
    public var x: Int?
    public var y: Int?
}

public struct GoldenInput: Codable, Sendable {
    public var height: Int
    public var width: Int
    public var K: Int
    public var focus: GoldenFocus
}

public struct GoldenConfig: Codable, Sendable {
    public var name: String
    public var tile: Int
    public var stride: Int
    public var latentChannels: Int
    public var latentTile: Int
    public var defocusInFocusThreshold: Double

    enum CodingKeys: String, CodingKey {
        case name, tile, stride
        case latentChannels = "latent_channels"
        case latentTile = "latent_tile"
        case defocusInFocusThreshold = "defocus_in_focus_threshold"
    }

    public var pipelineConfig: PipelineConfig {
        PipelineConfig(name: name, tile: tile, stride: stride, defocusInFocusThreshold: Float(defocusInFocusThreshold))
    }
}

public struct GoldenModel: Codable, Sendable {
    public var backend: String?
    public var label: JSONValue?
    public var artifacts: String?
    public var manifestSha256: String?

    enum CodingKeys: String, CodingKey {
        case backend, label, artifacts
        case manifestSha256 = "manifest_sha256"
    }
}

public struct GoldenPlan: Codable, Sendable {
    public var height: Int
    public var width: Int
    public var tile: Int
    public var stride: Int
    public var boxes: [TileBox]
}

public struct GoldenTile: Codable, Sendable {
    public var index: Int
    /// "rgb", "defocus", "in_focus", "latent", "x0", "decoded", "weight" -> array name.
    public var arrays: [String: String]
}

public struct GoldenColourFix: Codable, Sendable {
    public var meanOutput: [Float]
    public var stdOutput: [Float]
    public var meanInput: [Float]
    public var stdInput: [Float]

    enum CodingKeys: String, CodingKey {
        case meanOutput = "mean_output"
        case stdOutput = "std_output"
        case meanInput = "mean_input"
        case stdInput = "std_input"
    }
}

/// `golden.json`.
public struct GoldenIndex: Codable, Sendable {
    public var schema: String
    public var schemaVersion: Int
    public var config: GoldenConfig
    public var model: GoldenModel
    public var input: GoldenInput
    public var focusValue: Double
    public var focusValueBits: UInt32
    public var padding: [Int]
    public var paddedSize: [Int]
    public var plan: GoldenPlan
    public var arrays: [String: GoldenArraySpec]
    public var tiles: [GoldenTile]
    public var colourFix: GoldenColourFix

    enum CodingKeys: String, CodingKey {
        case schema, config, model, input, padding, plan, arrays, tiles
        case schemaVersion = "schema_version"
        case focusValue = "focus_value"
        case focusValueBits = "focus_value_bits"
        case paddedSize = "padded_size"
        case colourFix = "colour_fix"
    }
}

/// An opened golden folder: its index, and its arrays read on demand (one tile at a time).
public struct Golden: Sendable {
    public let url: URL
    public let index: GoldenIndex

    public init(url: URL) throws {
        let indexURL = url.appendingPathComponent("golden.json")
        guard let data = FileManager.default.contents(atPath: indexURL.path) else {
            throw BokehError.golden("\(url.path) has no golden.json: not a golden folder, or one that was not finished")
        }
        struct Header: Decodable {
            var schema: String?
            var schema_version: Int?
        }
        guard let header = try? JSONDecoder().decode(Header.self, from: data) else {
            throw BokehError.golden("\(indexURL.path) is not valid JSON")
        }
        guard header.schema == goldenSchema, header.schema_version == goldenSchemaVersion else {
            throw BokehError.golden("\(indexURL.path): schema '\(header.schema ?? "none")' v\(header.schema_version.map(String.init) ?? "?") is not '\(goldenSchema)' v\(goldenSchemaVersion)")
        }
        do { index = try JSONDecoder().decode(GoldenIndex.self, from: data) } catch {
            throw BokehError.golden(describe(error, document: indexURL.path))
        }
        self.url = url
    }

    public func spec(_ name: String) throws -> GoldenArraySpec {
        guard let spec = index.arrays[name] else { throw BokehError.golden("\(url.path) has no array '\(name)'") }
        return spec
    }

    private func rawData(_ name: String, dtype: String, size: Int) throws -> (GoldenArraySpec, Data) {
        let spec = try spec(name)
        guard spec.dtype == dtype else { throw BokehError.golden("array '\(name)' is \(spec.dtype), not \(dtype)") }
        guard let data = FileManager.default.contents(atPath: url.appendingPathComponent(spec.file).path) else {
            throw BokehError.golden("\(url.path)/\(spec.file) is missing")
        }
        guard data.count == spec.count * size else {
            throw BokehError.golden("\(spec.file): \(data.count) bytes, the index says shape \(spec.shape) of \(dtype)")
        }
        return (spec, data)
    }

    /// A float32 array (little-endian on disk).
    public func floats(_ name: String) throws -> [Float] {
        let (spec, data) = try rawData(name, dtype: "float32", size: 4)
        var out = [Float](repeating: 0, count: spec.count)
        data.withUnsafeBytes { raw in
            for i in 0..<spec.count {
                out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
            }
        }
        return out
    }

    /// A uint8 array.
    public func bytes(_ name: String) throws -> [UInt8] { [UInt8](try rawData(name, dtype: "uint8", size: 1).1) }

    /// The array name of one tile's recorded stage ("rgb", "decoded", ...).
    public func tileArray(_ index: Int, _ what: String) throws -> String {
        guard index < self.index.tiles.count, let name = self.index.tiles[index].arrays[what] else {
            throw BokehError.golden("\(url.path) records no '\(what)' for tile \(index)")
        }
        return name
    }

    // The inputs of the recorded render, as the pipeline takes them.
    public var height: Int { index.input.height }
    public var width: Int { index.input.width }

    public func image() throws -> RGBImage { try RGBImage(height: height, width: width, channels: 3, values: bytes("image_u8")) }
    public func depth() throws -> FloatMap { try FloatMap(height: height, width: width, values: floats("depth")) }

    public func focus() throws -> FocusSpec {
        switch index.input.focus.mode {
        case "mask": return .mask(try ByteMap(height: height, width: width, values: bytes("mask")))
        case "point":
            guard let x = index.input.focus.x, let y = index.input.focus.y else {
                throw BokehError.golden("point focus without x / y")
            }
            return .point(x: x, y: y)
        case let mode: throw BokehError.golden("unknown focus mode '\(mode)'")
        }
    }

    /// The model's provenance label as one line.
    public var modelLabel: String {
        switch index.model.label {
        case .string(let text)?: return text
        case .object(let object)?: return object["description"]?.stringValue ?? JSONValue.object(object).jsonText
        default: return "golden replay (\(index.model.backend ?? "unknown backend"))"
        }
    }
}

/// A tile model that returns the golden's recorded component outputs instead of running a
/// network, after checking that the pipeline fed it exactly the recorded inputs. With it the
/// whole Swift pipeline runs on any OS with only the model call replaced.
public struct GoldenReplayModel: TileModel {
    public let golden: Golden
    public var tileSize: Int { golden.index.config.tile }

    public init(golden: Golden) { self.golden = golden }

    public func run(_ input: TileInput) async throws -> TileOutput {
        let i = input.box.index
        guard i < golden.index.tiles.count else {
            throw BokehError.golden("the pipeline asked for tile \(i) but the golden recorded \(golden.index.tiles.count)")
        }
        let box = golden.index.plan.boxes[i]
        guard box == input.box else {
            throw BokehError.golden("tile \(i): the pipeline cut \(input.box) but the golden recorded \(box)")
        }
        for (what, fed) in [("rgb", input.rgb), ("defocus", input.defocus), ("in_focus", input.inFocus)] {
            let recorded = try golden.floats(golden.tileArray(i, what))
            if let at = firstBitDifference(fed, recorded) {
                throw BokehError.golden("tile \(i): the pipeline's \(what) input differs from the recorded one at element \(at) (\(at < fed.count ? fed[at] : .nan) vs \(at < recorded.count ? recorded[at] : .nan))")
            }
        }
        return TileOutput(latent: try golden.floats(golden.tileArray(i, "latent")),
                          x0: try golden.floats(golden.tileArray(i, "x0")),
                          decoded: try golden.floats(golden.tileArray(i, "decoded")))
    }
}

/// The first index where two float arrays differ in their bits (or in length), nil if identical.
public func firstBitDifference(_ a: [Float], _ b: [Float]) -> Int? {
    if a.count != b.count { return min(a.count, b.count) }
    for i in 0..<a.count where a[i].bitPattern != b[i].bitPattern { return i }
    return nil
}

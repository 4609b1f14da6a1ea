#if canImport(CoreML)
import CoreML
import Foundation

/// Which processors Core ML may use, named as the manifest and the benchmarks name them.
public enum ComputeUnitsChoice: String, CaseIterable, Sendable {
    case all
    case cpuAndNeuralEngine = "cpu_and_ne"
    case cpuAndGPU = "cpu_and_gpu"
    case cpuOnly = "cpu_only"

    public var mlComputeUnits: MLComputeUnits {
        switch self {
        case .all: return .all
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuOnly: return .cpuOnly
        }
    }
}

/// One exported component (its packages, one or several chunks run in sequence) behind a lock:
/// loaded on first use or on request, unloadable under memory pressure, predicting one call at a
/// time. Follows the manifest: file names, chunk inputs / outputs, input and output names.
public final class ManagedComponentModel: @unchecked Sendable {
    public let name: String
    public let entry: ComponentEntry
    public let folder: URL
    public let computeUnits: ComputeUnitsChoice
    /// Where compiled `.mlmodelc` folders of `.mlpackage` files are kept between launches (nil: a
    /// temporary folder, compiled again next launch).
    public let compiledCache: URL?

    private let lock = NSLock()
    private var pieces: [MLModel]?

    public init(name: String, entry: ComponentEntry, folder: URL, computeUnits: ComputeUnitsChoice = .cpuAndNeuralEngine, compiledCache: URL? = nil) {
        self.name = name
        self.entry = entry
        self.folder = folder
        self.computeUnits = computeUnits
        self.compiledCache = compiledCache
    }

    public var isLoaded: Bool { lock.withLock { pieces != nil } }

    /// Loads (compiling `.mlpackage` files when no `.mlmodelc` sits beside them) every piece.
    /// Returns the seconds it took.
    @discardableResult
    public func load() async throws -> Double {
        if isLoaded { return 0 }
        let started = Date()
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits.mlComputeUnits
        var loaded: [MLModel] = []
        for piece in entry.pieces {
            let url = try await compiledURL(for: piece.file)
            do {
                let model = try await MLModel.load(contentsOf: url, configuration: configuration)
                try check(model, piece: piece)
                loaded.append(model)
            } catch let error as BokehError {
                throw error
            } catch {
                throw BokehError.model("component '\(name)': loading \(url.lastPathComponent) failed: \(error.localizedDescription)")
            }
        }
        lock.withLock { pieces = loaded }
        return Date().timeIntervalSince(started)
    }

    /// Drops the loaded models (e.g. on a memory warning); the next prediction loads them again.
    public func unload() { lock.withLock { pieces = nil } }

    /// The `.mlmodelc` for a manifest file: the compiled sibling when present, else the package
    /// compiled now (and cached when `compiledCache` is set).
    private func compiledURL(for relative: String) async throws -> URL {
        let url = folder.appendingPathComponent(relative)
        if url.pathExtension == "mlmodelc", FileManager.default.fileExists(atPath: url.path) { return url }
        let sibling = url.deletingPathExtension().appendingPathExtension("mlmodelc")
        if FileManager.default.fileExists(atPath: sibling.path) { return sibling }
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw BokehError.manifest("component '\(name)': Core ML package \(url.path) is missing (and no compiled \(sibling.lastPathComponent) beside it)")
        }
        let cached = compiledCache.map { $0.appendingPathComponent("\(entry.sha256.prefix(16))-\(relative.replacingOccurrences(of: "/", with: "_"))c") }
        if let cached, FileManager.default.fileExists(atPath: cached.path) { return cached }
        let compiled: URL
        do { compiled = try await MLModel.compileModel(at: url) } catch {
            throw BokehError.model("component '\(name)': compiling \(url.lastPathComponent) failed: \(error.localizedDescription)")
        }
        guard let cached else { return compiled }
        try? FileManager.default.createDirectory(at: cached.deletingLastPathComponent(), withIntermediateDirectories: true)
        do {
            try FileManager.default.moveItem(at: compiled, to: cached)
            return cached
        } catch {
            return compiled
        }
    }

    /// The package declares the inputs and outputs the manifest says this piece has.
    private func check(_ model: MLModel, piece: ChunkEntry) throws {
        let declaredInputs = Set(model.modelDescription.inputDescriptionsByName.keys)
        let declaredOutputs = Set(model.modelDescription.outputDescriptionsByName.keys)
        let missingInputs = piece.inputs.filter { !declaredInputs.contains($0) }
        let missingOutputs = piece.outputs.filter { !declaredOutputs.contains($0) }
        guard missingInputs.isEmpty, missingOutputs.isEmpty else {
            throw BokehError.manifest("component '\(name)': \(piece.file) declares inputs \(declaredInputs.sorted()) and outputs \(declaredOutputs.sorted()), the manifest expects \(piece.inputs) -> \(piece.outputs): package and manifest do not belong together")
        }
        for spec in entry.inputs where declaredInputs.contains(spec.name) {
            if let shape = model.modelDescription.inputDescriptionsByName[spec.name]?.multiArrayConstraint?.shape.map(\.intValue),
               shape != spec.shape {
                throw BokehError.manifest("component '\(name)': \(piece.file) takes '\(spec.name)' of shape \(shape), the manifest says \(spec.shape)")
            }
        }
    }

    /// Runs the pieces in order on the named float32 inputs; returns the component's output.
    public func predict(_ inputs: [String: [Float]]) async throws -> [Float] {
        if !isLoaded { try await load() }
        guard let models = lock.withLock({ pieces }) else {
            throw BokehError.model("component '\(name)' was unloaded while in use")
        }
        var values: [String: MLMultiArray] = [:]
        for spec in entry.inputs {
            guard let data = inputs[spec.name] else {
                throw BokehError.model("component '\(name)': input '\(spec.name)' was not given")
            }
            guard data.count == spec.elementCount else {
                throw BokehError.model("component '\(name)': input '\(spec.name)' has \(data.count) values, shape \(spec.shape) needs \(spec.elementCount)")
            }
            values[spec.name] = try TensorConversion.multiArray(data, shape: spec.shape, like: models.first?.modelDescription.inputDescriptionsByName[spec.name]?.multiArrayConstraint?.dataType)
        }
        for (model, piece) in zip(models, entry.pieces) {
            var feeds: [String: MLFeatureValue] = [:]
            for inputName in piece.inputs {
                guard let value = values[inputName] else {
                    throw BokehError.model("component '\(name)': chunk \(piece.file) needs '\(inputName)', which nothing produced")
                }
                feeds[inputName] = MLFeatureValue(multiArray: value)
            }
            let provider = try MLDictionaryFeatureProvider(dictionary: feeds)
            let result: MLFeatureProvider
            do { result = try await model.prediction(from: provider) } catch {
                throw BokehError.model("component '\(name)': prediction of \(piece.file) failed: \(error.localizedDescription)")
            }
            for outputName in piece.outputs {
                guard let array = result.featureValue(for: outputName)?.multiArrayValue else {
                    throw BokehError.model("component '\(name)': \(piece.file) returned no array '\(outputName)'")
                }
                values[outputName] = array
            }
        }
        let output = entry.outputs[0]
        guard let array = values[output.name] else {
            throw BokehError.model("component '\(name)': no piece produced the output '\(output.name)'")
        }
        let scalars = TensorConversion.floats(array)
        guard scalars.count == output.elementCount else {
            throw BokehError.model("component '\(name)': output '\(output.name)' has \(scalars.count) values, the manifest's shape \(output.shape) needs \(output.elementCount)")
        }
        return scalars
    }
}

/// Float arrays <-> Core ML multi-arrays.
public enum TensorConversion {
    /// An MLMultiArray of `shape` holding `values`, in the model's declared type when it is
    /// float16 (on arm64, where Swift has Float16) and float32 otherwise (Core ML converts).
    public static func multiArray(_ values: [Float], shape: [Int], like dataType: MLMultiArrayDataType?) throws -> MLMultiArray {
        #if arch(arm64)
        if dataType == .float16 {
            return MLMultiArray(MLShapedArray<Float16>(scalars: values.map { Float16($0) }, shape: shape))
        }
        #endif
        return MLMultiArray(MLShapedArray<Float>(scalars: values, shape: shape))
    }

    /// The scalars of any float multi-array as float32, in C order (strides respected).
    public static func floats(_ array: MLMultiArray) -> [Float] {
        MLShapedArray<Float>(converting: array).scalars
    }
}
#endif

import Foundation
import MagicBokehKit

/// magicbokeh-cli: renders through the Swift pipeline.
///
///   --replay GOLDEN_DIR --out O.png        any OS: the golden's recorded per-tile component outputs
///                                          stand in for the model; prints the agreement with the
///                                          golden's final image
///   --artifacts DIR --image I --depth D.npy (--mask M | --focus-point X,Y) [--K K] --out O.png
///                                          macOS: renders through Core ML
///   --artifacts DIR --time [--runs N] [--warmup W] [--compute-units U...] --timing-out FILE
///                                          macOS: times each component, writes the JSON that
///                                          `benchmarks/run.py --coreml-timings FILE` merges

let usage = """
usage: magicbokeh-cli --replay GOLDEN_DIR --out OUT.png
       magicbokeh-cli --artifacts DIR --image PHOTO --depth DEPTH.npy (--mask MASK | --focus-point X,Y) [--K K] --out OUT.png
                      [--compute-units all|cpu_and_ne|cpu_and_gpu|cpu_only] [--compiled-cache DIR]
       magicbokeh-cli --artifacts DIR --time [--runs N] [--warmup W] [--compute-units U ...] --timing-out FILE

  --replay DIR          golden folder written by `python -m runtime_py golden`; its recorded per-tile
                        component outputs replace the model (checked against what the pipeline feeds)
  --out FILE            output PNG (the model label goes into a tEXt chunk `magicbokeh:model`)
  --artifacts DIR       Core ML artifacts folder written by export/to_coreml.py (macOS only)
  --image FILE          input photo (any format ImageIO reads)
  --depth FILE          depth map .npy, (H, W) float in [0, 1], larger = nearer
  --mask FILE           focus mask image: focus on the median 8-bit depth under its non-zero pixels
  --focus-point X,Y     focus at the depth of pixel (column X, row Y)
  --K K                 aperture, integer 1..32 (default 16)
  --compute-units U     Core ML compute units (default cpu_and_ne for rendering; with --time, several
                        may be given, default all four)
  --compiled-cache DIR  keep .mlmodelc compilations of .mlpackage files here between runs
  --time                time each component over --runs predictions after --warmup untimed ones
  --runs N              timed predictions per component (default 10)
  --warmup W            untimed predictions first (default 2)
  --timing-out FILE     where --time writes its JSON (schema magicbokeh-coreml-mac-timing)
  --help                this text
"""

struct UsageError: Error, CustomStringConvertible {
    let description: String
}

/// Flags as a dictionary; `--compute-units` may repeat its values.
func parseArguments(_ arguments: [String]) throws -> [String: [String]] {
    let valued: Set<String> = ["--replay", "--out", "--artifacts", "--image", "--depth", "--mask", "--focus-point",
                               "--K", "--compute-units", "--compiled-cache", "--runs", "--warmup", "--timing-out"]
    let switches: Set<String> = ["--time", "--help", "-h"]
    var parsed: [String: [String]] = [:]
    var i = 0
    while i < arguments.count {
        let flag = arguments[i]
        if switches.contains(flag) {
            parsed[flag] = []
            i += 1
        } else if valued.contains(flag) {
            var values: [String] = []
            i += 1
            while i < arguments.count, !arguments[i].hasPrefix("--") {
                values.append(arguments[i])
                i += 1
                if flag != "--compute-units" { break }
            }
            guard !values.isEmpty else { throw UsageError(description: "\(flag) needs a value") }
            parsed[flag] = values
        } else {
            throw UsageError(description: "unknown argument '\(flag)'")
        }
    }
    return parsed
}

func replay(goldenPath: String, outPath: String) async throws {
    let golden = try Golden(url: URL(fileURLWithPath: goldenPath))
    let renderer = try BokehRenderer(config: golden.index.config.pipelineConfig)
    let result = try await renderer.render(image: golden.image(), depth: golden.depth(), focus: golden.focus(),
                                           K: golden.index.input.K, model: GoldenReplayModel(golden: golden))
    try PNGWriter.write(result.image, to: URL(fileURLWithPath: outPath),
                        text: [("magicbokeh:model", golden.index.model.label?.jsonText ?? golden.modelLabel),
                               ("magicbokeh:settings", "{\"K\": \(golden.index.input.K), \"config\": \"\(golden.index.config.name)\", \"backend\": \"golden-replay\"}")])
    let agreement = ByteAgreement(result.image.values, try golden.bytes("final_u8"))
    print("wrote \(outPath) (\(result.image.width)x\(result.image.height), \(result.plan.count) tiles, config \(golden.index.config.name))")
    print("agreement with the golden final image: \(agreement)")
    guard agreement.within() else {
        throw BokehError.golden("the replay render is outside the golden's tolerance (within 1 grey level, >= 99.9 % identical)")
    }
}

func intValue(_ flags: [String: [String]], _ name: String, default value: Int) throws -> Int {
    guard let text = flags[name]?.first else { return value }
    guard let number = Int(text) else { throw UsageError(description: "\(name) must be an integer, got '\(text)'") }
    return number
}

#if canImport(CoreML) && canImport(ImageIO)
import CoreML

func computeUnits(_ flags: [String: [String]], default fallback: [ComputeUnitsChoice]) throws -> [ComputeUnitsChoice] {
    guard let names = flags["--compute-units"] else { return fallback }
    return try names.map { name in
        guard let units = ComputeUnitsChoice(rawValue: name) else {
            throw UsageError(description: "--compute-units takes \(ComputeUnitsChoice.allCases.map(\.rawValue).joined(separator: ", ")), got '\(name)'")
        }
        return units
    }
}

func renderWithCoreML(_ flags: [String: [String]]) async throws {
    guard let artifactsPath = flags["--artifacts"]?.first, let imagePath = flags["--image"]?.first,
          let depthPath = flags["--depth"]?.first, let outPath = flags["--out"]?.first else {
        throw UsageError(description: "rendering needs --artifacts, --image, --depth and --out")
    }
    let focus: FocusSpec
    if let mask = flags["--mask"]?.first {
        focus = .mask(try ImageFiles.loadMask(URL(fileURLWithPath: mask)))
    } else if let point = flags["--focus-point"]?.first {
        let parts = point.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard parts.count == 2, let x = parts[0], let y = parts[1] else {
            throw UsageError(description: "--focus-point must be 'X,Y' (two integers), got '\(point)'")
        }
        focus = .point(x: x, y: y)
    } else {
        throw UsageError(description: "give --mask or --focus-point")
    }
    let units = try computeUnits(flags, default: [.cpuAndNeuralEngine])[0]
    let artifacts = try ArtifactsFolder(url: URL(fileURLWithPath: artifactsPath), backend: "coreml")
    let model = try CoreMLTileModel(artifacts: artifacts, computeUnits: units,
                                    compiledCache: flags["--compiled-cache"]?.first.map { URL(fileURLWithPath: $0) })
    let loadSeconds = try await model.load()
    let image = try ImageFiles.loadRGB(URL(fileURLWithPath: imagePath))
    let depth = try NPYReader.readDepth(URL(fileURLWithPath: depthPath))
    let renderer = try BokehRenderer(config: artifacts.manifest.model.config.pipelineConfig)
    let result = try await renderer.render(image: image, depth: depth, focus: focus, K: try intValue(flags, "--K", default: 16),
                                           model: model) { progress in
        print("tile \(progress.completedTiles)/\(progress.totalTiles)")
    }
    try ImageFiles.writePNG(result.image, to: URL(fileURLWithPath: outPath), modelLabel: artifacts.manifest.modelLabel)
    print("wrote \(outPath): \(result.plan.count) tiles, focus \(result.focus), load \(loadSeconds), seconds \(result.seconds)")
}

/// numpy's default percentile (linear interpolation between order statistics).
func percentile(_ samples: [Double], _ q: Double) -> Double {
    let sorted = samples.sorted()
    let position = q / 100 * Double(sorted.count - 1)
    let lower = Int(position.rounded(.down)), upper = min(lower + 1, sorted.count - 1)
    return sorted[lower] + (sorted[upper] - sorted[lower]) * (position - Double(lower))
}

func timeComponents(_ flags: [String: [String]]) async throws {
    guard let artifactsPath = flags["--artifacts"]?.first, let outPath = flags["--timing-out"]?.first else {
        throw UsageError(description: "--time needs --artifacts and --timing-out")
    }
    let runs = try intValue(flags, "--runs", default: 10), warmup = try intValue(flags, "--warmup", default: 2)
    guard runs >= 1, warmup >= 0 else { throw UsageError(description: "--runs must be >= 1 and --warmup >= 0") }
    let artifacts = try ArtifactsFolder(url: URL(fileURLWithPath: artifactsPath), backend: "coreml")
    var results: [String: JSONValue] = [:]
    for units in try computeUnits(flags, default: ComputeUnitsChoice.allCases) {
        var rows: [String: JSONValue] = [:]
        for name in artifacts.manifest.components.keys.sorted() {
            let entry = artifacts.manifest.components[name]!
            let component = ManagedComponentModel(name: name, entry: entry, folder: artifacts.url, computeUnits: units)
            // Inputs of the declared shapes, uniform over each declared value range (as the Python timer).
            var generator = SystemRandomNumberGenerator()
            var inputs: [String: [Float]] = [:]
            for spec in entry.inputs {
                let range = spec.valueRange ?? [-1, 1]
                inputs[spec.name] = (0..<spec.elementCount).map { _ in Float(Double.random(in: range[0]...range[1], using: &generator)) }
            }
            do {
                let loadSeconds = try await component.load()
                for _ in 0..<warmup { _ = try await component.predict(inputs) }
                var samples: [Double] = []
                for _ in 0..<runs {
                    let started = Date()
                    _ = try await component.predict(inputs)
                    samples.append(Date().timeIntervalSince(started))
                }
                rows[name] = .object([
                    "load_s": .number(loadSeconds), "warmup": .number(Double(warmup)), "repeats": .number(Double(runs)),
                    "median_s": .number(percentile(samples, 50)), "p90_s": .number(percentile(samples, 90)),
                    "mean_s": .number(samples.reduce(0, +) / Double(samples.count)), "min_s": .number(samples.min()!),
                    "samples_s": .array(samples.map { .number($0) }), "chunks": .number(Double(entry.pieces.count)),
                    "runtime": .string("swift MLModel.prediction"),
                ])
                print("\(units.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0)) \(name.padding(toLength: 9, withPad: " ", startingAt: 0)) \(String(format: "%.1f", percentile(samples, 50) * 1e3)) ms")
            } catch {
                // One setting failing (e.g. no Neural Engine) must not hide the others.
                rows[name] = .object(["status": .string("error"), "error": .string(String(describing: error).prefix(500).description)])
                print("\(units.rawValue) \(name) error: \(error)")
            }
            component.unload()
        }
        results[units.rawValue] = .object(rows)
    }
    var system = utsname()
    uname(&system)
    let machineName = withUnsafeBytes(of: &system.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    var modelName = [CChar](repeating: 0, count: 256)
    var size = modelName.count
    let hardware = sysctlbyname("hw.model", &modelName, &size, nil, 0) == 0 ? String(cString: modelName) : ProcessInfo.processInfo.hostName
    let version = ProcessInfo.processInfo.operatingSystemVersion
    let document: JSONValue = .object([
        "schema": .string("magicbokeh-coreml-mac-timing"),
        "machine": .object(["system": .string("Darwin"), "release": .string("\(version.majorVersion).\(version.minorVersion).\(version.patchVersion)"),
                            "arch": .string(machineName), "name": .string(hardware)]),
        "artifacts": .string(artifactsPath),
        "created": .string(ISO8601DateFormatter().string(from: Date())),
        "precision": .string(artifacts.manifest.precision),
        "results": .object(results),
    ])
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    try encoder.encode(document).write(to: URL(fileURLWithPath: outPath), options: .atomic)
    print("wrote \(outPath)")
}
#endif

func run() async -> Int32 {
    do {
        let flags = try parseArguments(Array(CommandLine.arguments.dropFirst()))
        if flags["--help"] != nil || flags["-h"] != nil || flags.isEmpty {
            print(usage)
            return flags.isEmpty ? 2 : 0
        }
        if let golden = flags["--replay"]?.first {
            guard let out = flags["--out"]?.first else { throw UsageError(description: "--replay needs --out OUT.png") }
            try await replay(goldenPath: golden, outPath: out)
            return 0
        }
        guard flags["--artifacts"] != nil else { throw UsageError(description: "give --replay GOLDEN_DIR or --artifacts DIR") }
        #if canImport(CoreML) && canImport(ImageIO)
        if flags["--time"] != nil { try await timeComponents(flags) } else { try await renderWithCoreML(flags) }
        return 0
        #else
        throw BokehError.model("Core ML exists only on Apple systems: --artifacts rendering and --time need macOS; on this OS use --replay GOLDEN_DIR")
        #endif
    } catch let error as UsageError {
        FileHandle.standardError.write(Data("error: \(error.description)\n\(usage)\n".utf8))
        return 2
    } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        return 1
    }
}

exit(await run())

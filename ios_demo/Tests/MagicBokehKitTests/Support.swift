import Foundation
import XCTest
@testable import MagicBokehKit

/// Where the pytest wrapper (tests/ios_demo) put the golden folders and the artifacts fixture.
/// Without the variables the dependent tests are skipped with the reason; the wrapper fails on
/// any skip, so in CI they can never pass without having run.
enum Fixtures {
    static func goldenRoot() throws -> URL {
        guard let path = ProcessInfo.processInfo.environment["MAGICBOKEH_GOLDENS"], !path.isEmpty else {
            throw XCTSkip("MAGICBOKEH_GOLDENS is not set: run through pytest tests/ios_demo, which generates the goldens with `python -m runtime_py golden`")
        }
        return URL(fileURLWithPath: path)
    }

    static func golden(_ name: String) throws -> Golden {
        try Golden(url: goldenRoot().appendingPathComponent(name))
    }

    /// A fresh copy of the Python-written artifacts fixture (so a test may damage it).
    static func artifactsCopy() throws -> URL {
        guard let path = ProcessInfo.processInfo.environment["MAGICBOKEH_ARTIFACTS_FIXTURE"], !path.isEmpty else {
            throw XCTSkip("MAGICBOKEH_ARTIFACTS_FIXTURE is not set: run through pytest tests/ios_demo, which writes it with runtime_py.manifest")
        }
        let copy = temporaryFolder().appendingPathComponent("artifacts")
        try FileManager.default.copyItem(at: URL(fileURLWithPath: path), to: copy)
        return copy
    }

    static func temporaryFolder() -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("magicbokeh-tests-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

/// Asserts an error is the expected `BokehError` case and its message names the problem.
func assertBokehError<T>(_ body: @autoclosure () throws -> T, kind: (BokehError) -> Bool, contains text: String,
                         file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected an error mentioning '\(text)', got success", file: file, line: line)
    } catch let error as BokehError {
        XCTAssertTrue(kind(error), "wrong error kind: \(error)", file: file, line: line)
        XCTAssertTrue(error.description.contains(text), "'\(error)' does not mention '\(text)'", file: file, line: line)
        XCTAssertFalse(error.description.contains("\n"), "error is not one line: \(error)", file: file, line: line)
    } catch {
        XCTFail("expected a BokehError, got \(error)", file: file, line: line)
    }
}

func isInput(_ e: BokehError) -> Bool { if case .input = e { return true }; return false }
func isManifest(_ e: BokehError) -> Bool { if case .manifest = e { return true }; return false }
func isGolden(_ e: BokehError) -> Bool { if case .golden = e { return true }; return false }
func isModel(_ e: BokehError) -> Bool { if case .model = e { return true }; return false }

/// Checks every intermediate of the Swift pipeline against one golden folder.
enum GoldenChecks {
    /// 8-bit depth, focus (its float32 bits), padding, padded maps, defocus and in-focus: exact.
    static func inputContract(_ name: String) throws {
        let g = try Fixtures.golden(name)
        let depthU8 = depthToU8(try g.depth())
        XCTAssertEqual(depthU8.values, try g.bytes("depth_u8"), "\(name): depth_u8")
        let focus = try resolveFocus(depthU8: depthU8, focus: g.focus())
        XCTAssertEqual(focus.bitPattern, g.index.focusValueBits, "\(name): focus \(focus) vs \(g.index.focusValue)")
        let config = g.index.config
        let pad = tilePadding(height: g.height, width: g.width, tile: config.tile)
        XCTAssertEqual([pad.rows, pad.columns], g.index.padding, "\(name): padding")
        let paddedDepth = depthU8.reflectPadded(rows: pad.rows, columns: pad.columns)
        XCTAssertEqual([paddedDepth.height, paddedDepth.width], g.index.paddedSize)
        XCTAssertEqual(paddedDepth.values, try g.bytes("depth_u8_padded"), "\(name): depth_u8_padded")
        XCTAssertEqual(try g.image().reflectPadded(rows: pad.rows, columns: pad.columns).values, try g.bytes("image_u8_padded"), "\(name): image_u8_padded")
        let maps = try defocusMaps(depthU8: paddedDepth, focus: focus, K: g.index.input.K, threshold: Float(config.defocusInFocusThreshold))
        XCTAssertNil(firstBitDifference(maps.defocus.values, try g.floats("defocus")), "\(name): defocus")
        XCTAssertNil(firstBitDifference(maps.inFocus.values, try g.floats("in_focus")), "\(name): in_focus")
    }

    /// The plan (order, positions, kinds), each tile's three inputs and its blend weight: exact.
    static func tilePlanAndWeights(_ name: String) throws {
        let g = try Fixtures.golden(name)
        let config = g.index.config
        let pad = tilePadding(height: g.height, width: g.width, tile: config.tile)
        let plan = try TilePlan(height: g.height + pad.rows, width: g.width + pad.columns, tile: config.tile, stride: config.stride)
        XCTAssertEqual(plan.boxes, g.index.plan.boxes, "\(name): tile plan")
        XCTAssertEqual(g.index.tiles.count, plan.count)
        let image = try g.image().reflectPadded(rows: pad.rows, columns: pad.columns)
        let depthU8 = depthToU8(try g.depth())
        let focus = try resolveFocus(depthU8: depthU8, focus: g.focus())
        let maps = try defocusMaps(depthU8: depthU8.reflectPadded(rows: pad.rows, columns: pad.columns), focus: focus,
                                   K: g.index.input.K, threshold: Float(config.defocusInFocusThreshold))
        for box in plan.boxes {
            let i = box.index
            XCTAssertNil(firstBitDifference(modelRangeTile(image, box: box), try g.floats(g.tileArray(i, "rgb"))), "\(name): tile \(i) rgb")
            XCTAssertNil(firstBitDifference(mapTile(maps.defocus, box: box), try g.floats(g.tileArray(i, "defocus"))), "\(name): tile \(i) defocus")
            XCTAssertNil(firstBitDifference(mapTile(maps.inFocus, box: box), try g.floats(g.tileArray(i, "in_focus"))), "\(name): tile \(i) in_focus")
            XCTAssertNil(firstBitDifference(blendWeights(box: box, plan: plan), try g.floats(g.tileArray(i, "weight"))), "\(name): tile \(i) weight")
        }
    }

    /// The whole render with the replay model: blended and raw_u8 exact, the colour statistics
    /// within the golden's relative tolerance, final_u8 within one grey level at >= 99.9 %.
    static func render(_ name: String) async throws -> ByteAgreement {
        let g = try Fixtures.golden(name)
        let renderer = try BokehRenderer(config: g.index.config.pipelineConfig)
        let counter = ProgressCounter()
        let result = try await renderer.render(image: g.image(), depth: g.depth(), focus: g.focus(), K: g.index.input.K,
                                               model: GoldenReplayModel(golden: g)) { counter.record($0) }
        XCTAssertEqual(counter.completed, Array(1...g.index.tiles.count), "\(name): one progress report per tile, in order")
        XCTAssertNil(firstBitDifference(result.blended, try g.floats("blended")), "\(name): blended")
        XCTAssertEqual(result.raw.values, try g.bytes("raw_u8"), "\(name): raw_u8")
        let stats = g.index.colourFix
        // The reference reduces in float32 in an order it does not fix; 1e-5 relative is the
        // golden's stated tolerance for the statistics (the Swift sums run in Double).
        for (ours, theirs, what) in [(result.outputStatistics.mean, stats.meanOutput, "mean_output"), (result.outputStatistics.std, stats.stdOutput, "std_output"),
                                     (result.inputStatistics.mean, stats.meanInput, "mean_input"), (result.inputStatistics.std, stats.stdInput, "std_input")] {
            for (a, b) in zip(ours, theirs) {
                XCTAssertLessThanOrEqual(abs(a - b), 1e-5 * abs(b), "\(name): \(what) \(a) vs \(b)")
            }
        }
        // With the reference's own statistics the elementwise float32 steps must match exactly.
        let withTheirs = applyColourFix(result.raw, outputStatistics: ChannelStatistics(mean: stats.meanOutput, std: stats.stdOutput),
                                        inputStatistics: ChannelStatistics(mean: stats.meanInput, std: stats.stdInput))
        XCTAssertEqual(withTheirs.values, try g.bytes("final_u8"), "\(name): colour fix with the golden's statistics")
        let agreement = ByteAgreement(result.image.values, try g.bytes("final_u8"))
        XCTAssertTrue(agreement.within(maxAbs: 1, identicalFraction: 0.999), "\(name): final_u8 \(agreement)")
        print("golden \(name): final_u8 \(agreement)")
        return agreement
    }
}

/// Collects progress reports from the renderer's @Sendable callback.
final class ProgressCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int] = []
    func record(_ progress: RenderProgress) { lock.withLock { values.append(progress.completedTiles) } }
    var completed: [Int] { lock.withLock { values } }
}

import Foundation
import XCTest
@testable import MagicBokehKit

/// A stand-in model: returns its input tile as the decoded tile (identity), counting calls.
final class EchoModel: TileModel, @unchecked Sendable {
    let tileSize: Int
    let delay: UInt64
    let outputCount: Int?
    private let lock = NSLock()
    private var count = 0
    init(tileSize: Int, delayNanoseconds: UInt64 = 0, outputCount: Int? = nil) {
        self.tileSize = tileSize
        delay = delayNanoseconds
        self.outputCount = outputCount
    }
    var calls: Int { lock.withLock { count } }
    func run(_ input: TileInput) async throws -> TileOutput {
        lock.withLock { count += 1 }
        if delay > 0 { try await Task.sleep(nanoseconds: delay) }
        if let outputCount { return TileOutput(decoded: [Float](repeating: 0, count: outputCount)) }
        return TileOutput(decoded: input.rgb)
    }
}

final class PipelineTests: XCTestCase {
    let config = PipelineConfig(name: "test", tile: 32, stride: 16, defocusInFocusThreshold: 0.1)

    func photo(_ height: Int, _ width: Int) throws -> (RGBImage, FloatMap) {
        let image = try RGBImage(height: height, width: width, channels: 3, values: (0..<(height * width * 3)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let depth = try FloatMap(height: height, width: width, values: (0..<(height * width)).map { Float($0 % width) / Float(width) })
        return (image, depth)
    }

    /// With an identity model the blend of overlapping tiles gives back the photo (weights sum
    /// to one after division), so raw equals the input up to the 8-bit round trip.
    func testIdentityModelReturnsThePhoto() async throws {
        let (image, depth) = try photo(45, 70)
        let model = EchoModel(tileSize: 32)
        let result = try await BokehRenderer(config: config).render(image: image, depth: depth, focus: .point(x: 3, y: 4), K: 8, model: model)
        XCTAssertEqual(model.calls, result.plan.count)
        let worst = zip(result.raw.values, image.values).map { abs(Int($0) - Int($1)) }.max()!
        XCTAssertLessThanOrEqual(worst, 1, "u8 -> [-1, 1] -> u8 truncates at most one level")
    }

    func testMismatchedDepthSizeIsRefusedBeforeAnyTile() async throws {
        let (image, _) = try photo(40, 50)
        let (_, depth) = try photo(40, 49)
        let model = EchoModel(tileSize: 32)
        await assertRenderFails(image, depth, .point(x: 0, y: 0), 8, model, contains: "depth map is 40x49 (HxW) but the image is 40x50")
        XCTAssertEqual(model.calls, 0)
    }

    func testEmptyMaskIsRefused() async throws {
        let (image, depth) = try photo(40, 50)
        let mask = ByteMap(height: 40, width: 50, repeating: 0)
        let model = EchoModel(tileSize: 32)
        await assertRenderFails(image, depth, .mask(mask), 8, model, contains: "the focus mask is empty")
        XCTAssertEqual(model.calls, 0)
    }

    func testMaskOfAnotherSizeIsRefused() async throws {
        let (image, depth) = try photo(40, 50)
        await assertRenderFails(image, depth, .mask(ByteMap(height: 41, width: 50, repeating: 1)), 8, EchoModel(tileSize: 32),
                                contains: "mask is 41x50 (HxW) but the image is 40x50")
    }

    func testPointOutsideTheImageIsRefused() async throws {
        let (image, depth) = try photo(40, 50)
        await assertRenderFails(image, depth, .point(x: 50, y: 0), 8, EchoModel(tileSize: 32), contains: "lies outside the 50x40 (WxH) image")
    }

    func testApertureOutsideOneToThirtyTwoIsRefused() async throws {
        let (image, depth) = try photo(40, 50)
        for K in [0, 33, -1] {
            await assertRenderFails(image, depth, .point(x: 1, y: 1), K, EchoModel(tileSize: 32), contains: "must be an integer in 1..32, got \(K)")
        }
    }

    func testNonFiniteOrOutOfRangeDepthIsRefused() async throws {
        let (image, depth) = try photo(40, 50)
        var bad = depth
        bad.values[7] = .nan
        await assertRenderFails(image, bad, .point(x: 1, y: 1), 8, EchoModel(tileSize: 32), contains: "1 depth value(s) are NaN or infinite")
        bad = depth
        bad.values[3] = 1.5
        await assertRenderFails(image, bad, .point(x: 1, y: 1), 8, EchoModel(tileSize: 32), contains: "outside [0, 1]")
    }

    func testModelForAnotherTileSizeIsRefused() async throws {
        let (image, depth) = try photo(40, 50)
        do {
            _ = try await BokehRenderer(config: config).render(image: image, depth: depth, focus: .point(x: 1, y: 1), K: 8, model: EchoModel(tileSize: 64))
            XCTFail("a 64-px model ran 32-px tiles")
        } catch let error as BokehError {
            XCTAssertTrue(isModel(error) && error.description.contains("takes 64x64 tiles"), "\(error)")
        }
    }

    func testModelReturningTheWrongSizeIsAClearError() async throws {
        let (image, depth) = try photo(40, 50)
        do {
            _ = try await BokehRenderer(config: config).render(image: image, depth: depth, focus: .point(x: 1, y: 1), K: 8,
                                                               model: EchoModel(tileSize: 32, outputCount: 100))
            XCTFail("a wrong-sized tile was blended")
        } catch let error as BokehError {
            XCTAssertTrue(isModel(error) && error.description.contains("expected 3x32x32 = 3072 values, got 100"), "\(error)")
        }
    }

    /// Cancelling the task stops between tiles: fewer model calls than tiles, CancellationError.
    func testCancellationStopsBetweenTiles() async throws {
        let (image, depth) = try photo(100, 120)
        let model = EchoModel(tileSize: 32, delayNanoseconds: 20_000_000)
        let renderer = try BokehRenderer(config: config)
        let plan = try TilePlan(height: 100, width: 120, tile: 32, stride: 16)
        let task = Task { try await renderer.render(image: image, depth: depth, focus: .point(x: 1, y: 1), K: 8, model: model) }
        try await Task.sleep(nanoseconds: 70_000_000)
        task.cancel()
        do {
            _ = try await task.value
            XCTFail("the render finished despite the cancel")
        } catch is CancellationError {
        }
        XCTAssertLessThan(model.calls, plan.count, "cancel must stop before the last of \(plan.count) tiles")
    }

    func testTilePlanFollowsThePublishedOrder() throws {
        // 80 x 90 with tile 32 / stride 16: grid rows 0,16,32,48 / cols 0..48 (4), bottom-flush
        // at 48 only when (80-32) % 16 != 0 (it is 0: none), right-flush at 58.
        let plan = try TilePlan(height: 80, width: 90, tile: 32, stride: 16)
        XCTAssertEqual(plan.boxes.filter { $0.kind == .grid }.count, 16)
        XCTAssertEqual(plan.boxes.filter { $0.kind == .bottom }.count, 0)
        XCTAssertEqual(plan.boxes.filter { $0.kind == .right }.map(\.top), [0, 16, 32, 48])
        XCTAssertEqual(plan.boxes.filter { $0.kind == .right }.map(\.left), [58, 58, 58, 58])
        let corner = try TilePlan(height: 70, width: 90, tile: 32, stride: 16)
        XCTAssertEqual(corner.boxes.last.map { [$0.top, $0.left] }, [38, 58])
        XCTAssertEqual(corner.boxes.last?.kind, .corner)
        XCTAssertEqual(corner.boxes.map(\.index), Array(0..<corner.count))
    }

    /// torch.linspace's fused multiply-add differs from the unfused formula in the last bit at
    /// some points; the rising ramp must still start at exactly 0 and end at exactly 1.
    func testRampEndpointsAndFusedArithmetic() {
        let rising = torchLinspace(start: 0, end: 1, count: 64)
        XCTAssertEqual(rising.first, 0)
        XCTAssertEqual(rising.last, 1)
        let step = Float(1) / Float(63)
        let unfused = (0..<64).map { i in i < 32 ? Float(i) * step : Float(1) - Float(63 - i) * step }
        XCTAssertNotEqual(rising, unfused, "the two formulas coincide here: the fused form is untested")
        XCTAssertTrue(zip(rising, unfused).allSatisfy { abs($0 - $1) <= Float.ulpOfOne })
    }

    func testReflectPaddingRepeatsWhenPaddingExceedsTheSide() throws {
        let row = try ByteMap(height: 1, width: 3, values: [10, 20, 30])
        XCTAssertEqual(row.reflectPadded(rows: 0, columns: 6).values, [10, 20, 30, 20, 10, 20, 30, 20, 10])
        let single = try ByteMap(height: 1, width: 1, values: [5])
        XCTAssertEqual(single.reflectPadded(rows: 2, columns: 2).values, [UInt8](repeating: 5, count: 9))
    }

    func testMaskFocusIsTheLowerMedian() throws {
        let depth = try ByteMap(height: 1, width: 4, values: [10, 40, 20, 30])
        let mask = try ByteMap(height: 1, width: 4, values: [1, 1, 1, 1])
        XCTAssertEqual(try resolveFocus(depthU8: depth, focus: .mask(mask)), Float(20) / Float(255))
    }

    private func assertRenderFails(_ image: RGBImage, _ depth: FloatMap, _ focus: FocusSpec, _ K: Int, _ model: EchoModel,
                                   contains text: String, file: StaticString = #filePath, line: UInt = #line) async {
        do {
            _ = try await BokehRenderer(config: config).render(image: image, depth: depth, focus: focus, K: K, model: model)
            XCTFail("expected an input error mentioning '\(text)'", file: file, line: line)
        } catch let error as BokehError {
            XCTAssertTrue(isInput(error), "not an input error: \(error)", file: file, line: line)
            XCTAssertTrue(error.description.contains(text), "'\(error)' does not mention '\(text)'", file: file, line: line)
        } catch {
            XCTFail("expected a BokehError, got \(error)", file: file, line: line)
        }
    }
}

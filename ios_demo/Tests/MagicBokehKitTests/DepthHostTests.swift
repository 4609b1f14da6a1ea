import Foundation
import XCTest
@testable import MagicBokehKit

/// The host steps around the depth package against runtime_py.model.depth.estimate_depth_static
/// (recorded by the pytest wrapper with a stand-in component and a fixed disparity).
final class DepthHostTests: XCTestCase {
    private func fixture() throws -> (URL, Int, Int, Int) {
        guard let path = ProcessInfo.processInfo.environment["MAGICBOKEH_DEPTH_HOST_FIXTURE"], !path.isEmpty else {
            throw XCTSkip("MAGICBOKEH_DEPTH_HOST_FIXTURE is not set: run through pytest tests/ios_demo")
        }
        let url = URL(fileURLWithPath: path)
        let shape = try JSONSerialization.jsonObject(with: Data(contentsOf: url.appendingPathComponent("shape.json"))) as! [String: Int]
        return (url, shape["height"]!, shape["width"]!, shape["size"]!)
    }

    private func floats(_ url: URL) throws -> [Float] {
        let data = try Data(contentsOf: url)
        return data.withUnsafeBytes { raw in
            (0..<(data.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
    }

    /// Bicubic resize (torch, a = -0.75, border clamped) then clamp to [0, 1]. The tolerance
    /// covers float32 summation order (16 taps of values <= 1 with weights summing to 1).
    func testBicubicInputMatchesTorch() throws {
        let (url, height, width, size) = try fixture()
        let image = try RGBImage(height: height, width: width, channels: 3, values: [UInt8](Data(contentsOf: url.appendingPathComponent("image_u8.raw"))))
        let ours = depthComponentInput(image, size: size)
        let theirs = try floats(url.appendingPathComponent("rgb_resized.raw"))
        XCTAssertEqual(ours.count, theirs.count)
        let worst = zip(ours, theirs).map { abs($0 - $1) }.max()!
        XCTAssertLessThanOrEqual(worst, 2e-6, "max |difference| \(worst)")
    }

    /// Bilinear resize back with corners aligned, then min-max normalisation.
    func testDisparityToDepthMatchesTorch() throws {
        let (url, height, width, size) = try fixture()
        let ours = try depthFromDisparity(floats(url.appendingPathComponent("disparity.raw")), size: size, height: height, width: width)
        let theirs = try floats(url.appendingPathComponent("depth.raw"))
        let worst = zip(ours.values, theirs).map { abs($0 - $1) }.max()!
        XCTAssertLessThanOrEqual(worst, 2e-6, "max |difference| \(worst)")
    }
}

/// The command line's depth input: .npy files as numpy writes them.
final class NPYReaderTests: XCTestCase {
    func testReadsFloat32AndFloat64DepthMaps() throws {
        guard let path = ProcessInfo.processInfo.environment["MAGICBOKEH_DEPTH_HOST_FIXTURE"], !path.isEmpty else {
            throw XCTSkip("MAGICBOKEH_DEPTH_HOST_FIXTURE is not set: run through pytest tests/ios_demo")
        }
        let url = URL(fileURLWithPath: path)
        let data = try Data(contentsOf: url.appendingPathComponent("depth.raw"))
        let expected: [Float] = data.withUnsafeBytes { raw in
            (0..<(data.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
        for name in ["depth_f32.npy", "depth_f64.npy"] {
            let depth = try NPYReader.readDepth(url.appendingPathComponent(name))
            XCTAssertEqual([depth.height, depth.width], [37, 53], name)
            XCTAssertEqual(depth.values, expected, name)  // float32 -> float64 -> float32 is exact
        }
    }

    func testNotAnNPYFileIsAClearError() throws {
        let file = Fixtures.temporaryFolder().appendingPathComponent("x.npy")
        try Data("not numpy".utf8).write(to: file)
        assertBokehError(try NPYReader.readDepth(file), kind: isInput, contains: "is not a .npy file")
    }
}

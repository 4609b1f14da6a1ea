import Foundation
import XCTest
@testable import MagicBokehKit

final class GoldenReaderTests: XCTestCase {
    func testMissingFolderIsAClearError() {
        assertBokehError(try Golden(url: URL(fileURLWithPath: "/nonexistent/golden")), kind: isGolden, contains: "no golden.json")
    }

    func testWrongSchemaIsRefused() throws {
        let folder = Fixtures.temporaryFolder()
        try Data(#"{"schema": "something-else", "schema_version": 1}"#.utf8).write(to: folder.appendingPathComponent("golden.json"))
        assertBokehError(try Golden(url: folder), kind: isGolden, contains: "is not 'magicbokeh-golden' v1")
        try Data(#"{"schema": "magicbokeh-golden", "schema_version": 2}"#.utf8).write(to: folder.appendingPathComponent("golden.json"))
        assertBokehError(try Golden(url: folder), kind: isGolden, contains: "v2")
    }

    /// The replay model checks what it is fed: a render with another K feeds other defocus maps.
    func testReplayRefusesInputsThatDifferFromTheRecording() async throws {
        let g = try Fixtures.golden("tiny_mask_k32")
        let renderer = try BokehRenderer(config: g.index.config.pipelineConfig)
        do {
            _ = try await renderer.render(image: g.image(), depth: g.depth(), focus: g.focus(), K: 31, model: GoldenReplayModel(golden: g))
            XCTFail("a render with K = 31 replayed a K = 32 golden")
        } catch let error as BokehError {
            XCTAssertTrue(error.description.contains("defocus input differs"), "\(error)")
        }
    }

    /// A truncated array file is reported, not read past its end.
    func testTruncatedArrayIsAClearError() throws {
        let source = try Fixtures.goldenRoot().appendingPathComponent("tiny_point_k1")
        let copy = Fixtures.temporaryFolder().appendingPathComponent("g")
        try FileManager.default.copyItem(at: source, to: copy)
        let file = copy.appendingPathComponent("arrays/depth.raw")
        let data = try Data(contentsOf: file)
        try data.prefix(data.count - 4).write(to: file)
        let g = try Golden(url: copy)
        assertBokehError(try g.depth(), kind: isGolden, contains: "bytes, the index says shape")
    }
}

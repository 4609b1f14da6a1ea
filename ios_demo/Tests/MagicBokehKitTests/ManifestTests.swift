import Foundation
import XCTest
@testable import MagicBokehKit

/// Against an artifacts folder written by runtime_py.manifest.write_manifest (the real format,
/// with a chunked denoiser), its component files stand-ins with known bytes.
final class ManifestTests: XCTestCase {
    private func editManifest(_ folder: URL, _ edit: (inout [String: Any]) -> Void) throws {
        let url = folder.appendingPathComponent("manifest.json")
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        edit(&object)
        try JSONSerialization.data(withJSONObject: object).write(to: url)
    }

    func testPythonWrittenManifestLoadsAndVerifies() throws {
        let folder = try Fixtures.artifactsCopy()
        let artifacts = try ArtifactsFolder(url: folder, backend: "coreml")
        let manifest = artifacts.manifest
        XCTAssertEqual(manifest.model.config.name, "tiny")
        XCTAssertEqual(manifest.model.config.latentTile, manifest.components["encoder"]!.outputs[0].shape[3])
        XCTAssertEqual(manifest.components["denoiser"]!.pieces.count, 2, "the denoiser is chunked")
        XCTAssertEqual(manifest.components["encoder"]!.pieces.map(\.file), ["encoder.mlpackage"])
        XCTAssertEqual(manifest.components["encoder"]!.extra?.ioDtype, "float16")
        XCTAssertEqual(manifest.modelLabel, "artifacts fixture for the Swift tests")
        XCTAssertEqual(manifest.model.config.pipelineConfig.tile, 128)
    }

    func testChangedFileIsRefused() throws {
        let folder = try Fixtures.artifactsCopy()
        // Inside the chunk folder: the folder digest covers every file's bytes.
        let file = folder.appendingPathComponent("denoiser.chunks/chunk_01.mlpackage/Data/weights.bin")
        var data = try Data(contentsOf: file)
        data[0] ^= 1
        try data.write(to: file)
        assertBokehError(try ArtifactsFolder(url: folder), kind: isManifest, contains: "does not match the manifest")
        XCTAssertNoThrow(try ArtifactsFolder(url: folder, verifyHashes: false), "without hash checks the structure still loads")
    }

    func testWrongHashInManifestIsRefused() throws {
        let folder = try Fixtures.artifactsCopy()
        try editManifest(folder) { object in
            var components = object["components"] as! [String: Any]
            var encoder = components["encoder"] as! [String: Any]
            encoder["sha256"] = String(repeating: "0", count: 64)
            components["encoder"] = encoder
            object["components"] = components
        }
        assertBokehError(try ArtifactsFolder(url: folder), kind: isManifest, contains: "component 'encoder'")
    }

    func testWrongSchemaOrVersionIsRefused() throws {
        let folder = try Fixtures.artifactsCopy()
        try editManifest(folder) { $0["schema"] = "magicbokeh-something" }
        assertBokehError(try ArtifactsFolder(url: folder), kind: isManifest, contains: "not a MagicBokeh artifacts manifest")
        try editManifest(folder) { $0["schema"] = "magicbokeh-artifacts"; $0["schema_version"] = 2 }
        assertBokehError(try ArtifactsFolder(url: folder), kind: isManifest, contains: "schema version 2 is not supported")
    }

    func testMissingComponentIsRefused() throws {
        let folder = try Fixtures.artifactsCopy()
        try editManifest(folder) { object in
            var components = object["components"] as! [String: Any]
            components["decoder"] = nil
            object["components"] = components
        }
        assertBokehError(try ArtifactsFolder(url: folder), kind: isManifest, contains: "lack components [\"decoder\"]")
    }

    func testMissingFileIsRefused() throws {
        let folder = try Fixtures.artifactsCopy()
        try FileManager.default.removeItem(at: folder.appendingPathComponent("decoder.mlpackage"))
        assertBokehError(try ArtifactsFolder(url: folder), kind: isManifest, contains: "listed in the manifest but missing")
    }

    func testShapeThatDoesNotFitTheConfigIsRefused() throws {
        let folder = try Fixtures.artifactsCopy()
        try editManifest(folder) { object in
            var model = object["model"] as! [String: Any]
            var config = model["config"] as! [String: Any]
            config["tile"] = 256
            config["stride"] = 128
            model["config"] = config
            object["model"] = model
        }
        assertBokehError(try ArtifactsFolder(url: folder), kind: isManifest, contains: "do not fit config 'tiny'")
    }

    func testMalformedManifestNamesTheKey() throws {
        let folder = try Fixtures.artifactsCopy()
        try editManifest(folder) { object in
            var model = object["model"] as! [String: Any]
            model["config"] = nil
            object["model"] = model
        }
        assertBokehError(try ArtifactsFolder(url: folder), kind: isManifest, contains: "'.model.config' is missing")
        try Data("{not json".utf8).write(to: folder.appendingPathComponent("manifest.json"))
        assertBokehError(try ArtifactsFolder(url: folder), kind: isManifest, contains: "is not valid JSON")
    }

    func testFolderWithoutManifestIsAClearError() {
        let folder = Fixtures.temporaryFolder()
        assertBokehError(try ArtifactsFolder(url: folder), kind: isManifest, contains: "has no manifest.json")
        assertBokehError(try ArtifactsFolder(url: folder.appendingPathComponent("nope")), kind: isManifest, contains: "does not exist")
    }

    func testOtherBackendIsRefused() throws {
        let folder = try Fixtures.artifactsCopy()
        assertBokehError(try ArtifactsFolder(url: folder, backend: "executorch"), kind: isManifest, contains: "exported for backend 'coreml'")
    }
}

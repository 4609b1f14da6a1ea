import XCTest
@testable import MagicBokehKit

// One class per golden folder the pytest wrapper generates (tests/ios_demo/conftest.py).

/// tiny config, 140x150 (not a multiple of the stride: grid, bottom, right and corner tiles), mask focus, K = 32.
final class GoldenTinyMaskK32Tests: XCTestCase {
    let golden = "tiny_mask_k32"
    func testInputContract() throws { try GoldenChecks.inputContract(golden) }
    func testTilePlanInputsAndWeights() throws { try GoldenChecks.tilePlanAndWeights(golden) }
    func testRenderMatchesReference() async throws { _ = try await GoldenChecks.render(golden) }
}

/// tiny config, 128x192 (an exact multiple: grid tiles only), tap focus, K = 1.
final class GoldenTinyPointK1Tests: XCTestCase {
    let golden = "tiny_point_k1"
    func testInputContract() throws { try GoldenChecks.inputContract(golden) }
    func testTilePlanInputsAndWeights() throws { try GoldenChecks.tilePlanAndWeights(golden) }
    func testRenderMatchesReference() async throws { _ = try await GoldenChecks.render(golden) }
}

/// tiny config, 50x90 (both sides under one tile; the reflection repeats), mask focus, K = 8.
final class GoldenTinySmallerThanTileTests: XCTestCase {
    let golden = "tiny_small_mask"
    func testInputContract() throws { try GoldenChecks.inputContract(golden) }
    func testTilePlanInputsAndWeights() throws { try GoldenChecks.tilePlanAndWeights(golden) }
    func testRenderMatchesReference() async throws { _ = try await GoldenChecks.render(golden) }
}

/// tiny config, 100x200 (height under one tile, width not a multiple), tap focus, K = 16.
final class GoldenTinyShortAndWideTests: XCTestCase {
    let golden = "tiny_point_wide"
    func testInputContract() throws { try GoldenChecks.inputContract(golden) }
    func testTilePlanInputsAndWeights() throws { try GoldenChecks.tilePlanAndWeights(golden) }
    func testRenderMatchesReference() async throws { _ = try await GoldenChecks.render(golden) }
}

/// the default model (config small, 512-px tiles), 200x300 padded to one tile, tap focus, K = 24.
final class GoldenDefaultConfigTests: XCTestCase {
    let golden = "default_point_small"
    func testInputContract() throws { try GoldenChecks.inputContract(golden) }
    func testTilePlanInputsAndWeights() throws { try GoldenChecks.tilePlanAndWeights(golden) }
    func testRenderMatchesReference() async throws { _ = try await GoldenChecks.render(golden) }
}

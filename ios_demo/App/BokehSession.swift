import CoreGraphics
import Foundation
import MagicBokehKit
import Observation
import Photos
import UIKit

/// The app's state, kept thin over MagicBokehKit: it loads the bundled artifacts, estimates
/// depth with the depth package, renders with the Core ML tile model and saves the result.
@MainActor
@Observable
final class BokehSession {
    enum Phase: Equatable {
        case loadingModel
        case ready
        case estimatingDepth
        case rendering(completed: Int, total: Int)
        case failed(String)
    }

    /// Longest side a picked photo is scaled to: bounds the tile count (and the wait).
    static let maxSide = 1024

    var phase: Phase = .loadingModel
    var photo: RGBImage?
    var depth: FloatMap?
    var result: RGBImage?
    var focusPoint: (x: Int, y: Int)?
    var aperture: Double = 16
    var showBefore = false
    var modelLabel = ""
    var lastRenderSeconds: Double?

    private var artifacts: ArtifactsFolder?
    private var tileModel: CoreMLTileModel?
    private var depthEstimator: DepthEstimator?
    private var renderTask: Task<Void, Never>?

    /// Reads and checks Artifacts/manifest.json (hashes included) and loads the components.
    func loadModel() async {
        guard let url = Bundle.main.url(forResource: "Artifacts", withExtension: nil) else {
            phase = .failed("the app bundle has no Artifacts folder: add the export/to_coreml.py output as a folder reference named Artifacts")
            return
        }
        do {
            let folder = try ArtifactsFolder(url: url, backend: "coreml")
            let cache = FileManager.default.urls(for: .cachesDirectory, in: .userDomainMask).first?.appendingPathComponent("CompiledModels")
            let model = try CoreMLTileModel(artifacts: folder, computeUnits: .cpuAndNeuralEngine, compiledCache: cache)
            try await model.load()
            artifacts = folder
            tileModel = model
            depthEstimator = try DepthEstimator(artifacts: folder, compiledCache: cache)
            modelLabel = folder.manifest.modelLabel
            phase = .ready
        } catch {
            phase = .failed(String(describing: error))
        }
    }

    /// A new photo: scaled down, then its depth from the depth package.
    func setPhoto(_ image: UIImage) async {
        cancelRender()
        result = nil
        focusPoint = nil
        do {
            guard let cg = image.normalisedCGImage(maxSide: Self.maxSide) else { throw BokehError.input("the photo could not be decoded") }
            let rgb = try ImageFiles.rgbImage(from: cg)
            photo = rgb
            depth = nil
            guard let depthEstimator else {
                throw BokehError.manifest("the bundled artifacts have no depth component (export it with export/to_coreml.py), so there is no depth for this photo")
            }
            phase = .estimatingDepth
            depth = try await depthEstimator.depth(for: rgb)
            phase = .ready
        } catch {
            phase = .failed(String(describing: error))
        }
    }

    /// Tap at a point of the displayed photo, in photo pixels.
    func focus(atX x: Int, y: Int) {
        guard let photo else { return }
        focusPoint = (min(max(x, 0), photo.width - 1), min(max(y, 0), photo.height - 1))
    }

    var canRender: Bool { photo != nil && depth != nil && focusPoint != nil && tileModel != nil && !isRendering }
    var isRendering: Bool { if case .rendering = phase { return true }; return false }

    func render() {
        guard let photo, let depth, let focusPoint, let tileModel, let artifacts else { return }
        let K = Int(aperture.rounded())
        phase = .rendering(completed: 0, total: 0)
        renderTask = Task {
            do {
                let renderer = try BokehRenderer(config: artifacts.manifest.model.config.pipelineConfig)
                let rendered = try await renderer.render(image: photo, depth: depth, focus: .point(x: focusPoint.x, y: focusPoint.y),
                                                         K: K, model: tileModel) { progress in
                    Task { @MainActor in self.phase = .rendering(completed: progress.completedTiles, total: progress.totalTiles) }
                }
                result = rendered.image
                lastRenderSeconds = rendered.seconds["total"]
                phase = .ready
            } catch is CancellationError {
                phase = .ready
            } catch {
                phase = .failed(String(describing: error))
            }
        }
    }

    func cancelRender() {
        renderTask?.cancel()
        renderTask = nil
    }

    /// Saves the result to Photos as a PNG whose metadata names the model that made it.
    func save() async {
        guard let result else { return }
        do {
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("magicbokeh-\(UUID().uuidString).png")
            try ImageFiles.writePNG(result, to: url, modelLabel: modelLabel)
            let status = await PHPhotoLibrary.requestAuthorization(for: .addOnly)
            guard status == .authorized || status == .limited else { throw BokehError.io("no permission to add to the photo library") }
            try await PHPhotoLibrary.shared().performChanges {
                PHAssetCreationRequest.forAsset().addResource(with: .photo, fileURL: url, options: nil)
            }
        } catch {
            phase = .failed(String(describing: error))
        }
    }
}

extension UIImage {
    /// Upright (EXIF orientation applied) and no larger than `maxSide` on its longest side.
    func normalisedCGImage(maxSide: Int) -> CGImage? {
        let scale = min(1, CGFloat(maxSide) / max(size.width, size.height))
        let target = CGSize(width: (size.width * scale).rounded(), height: (size.height * scale).rounded())
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        return UIGraphicsImageRenderer(size: target, format: format).image { _ in draw(in: CGRect(origin: .zero, size: target)) }.cgImage
    }
}

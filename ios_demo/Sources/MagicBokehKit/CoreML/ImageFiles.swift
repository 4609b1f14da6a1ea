#if canImport(ImageIO) && canImport(CoreGraphics)
import CoreGraphics
import Foundation
import ImageIO
import UniformTypeIdentifiers

/// Photos and masks in and out through ImageIO (Apple systems only).
public enum ImageFiles {
    /// Draws a CGImage into 8-bit sRGB RGBA and keeps RGB.
    public static func rgbImage(from image: CGImage) throws -> RGBImage {
        let width = image.width, height = image.height
        var rgba = [UInt8](repeating: 0, count: width * height * 4)
        let drawn: Bool = rgba.withUnsafeMutableBytes { buffer in
            guard let space = CGColorSpace(name: CGColorSpace.sRGB),
                  let context = CGContext(data: buffer.baseAddress, width: width, height: height, bitsPerComponent: 8,
                                          bytesPerRow: width * 4, space: space,
                                          bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
            context.draw(image, in: CGRect(x: 0, y: 0, width: width, height: height))
            return true
        }
        guard drawn else { throw BokehError.input("the photo could not be converted to 8-bit RGB") }
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        for i in 0..<(width * height) {
            rgb[3 * i] = rgba[4 * i]; rgb[3 * i + 1] = rgba[4 * i + 1]; rgb[3 * i + 2] = rgba[4 * i + 2]
        }
        return try RGBImage(height: height, width: width, channels: 3, values: rgb)
    }

    public static func cgImage(from image: RGBImage) throws -> CGImage {
        var rgba = [UInt8](repeating: 255, count: image.width * image.height * 4)
        for i in 0..<(image.width * image.height) {
            rgba[4 * i] = image.values[3 * i]; rgba[4 * i + 1] = image.values[3 * i + 1]; rgba[4 * i + 2] = image.values[3 * i + 2]
        }
        guard let provider = CGDataProvider(data: Data(rgba) as CFData),
              let space = CGColorSpace(name: CGColorSpace.sRGB),
              let cg = CGImage(width: image.width, height: image.height, bitsPerComponent: 8, bitsPerPixel: 32,
                               bytesPerRow: image.width * 4, space: space,
                               bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                               provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent) else {
            throw BokehError.io("could not build an image of \(image.sizeText)")
        }
        return cg
    }

    public static func load(_ url: URL) throws -> CGImage {
        guard let source = CGImageSourceCreateWithURL(url as CFURL, nil),
              let image = CGImageSourceCreateImageAtIndex(source, 0, nil) else {
            throw BokehError.io("cannot read an image from \(url.path)")
        }
        return image
    }

    public static func loadRGB(_ url: URL) throws -> RGBImage { try rgbImage(from: load(url)) }

    /// A mask image: a pixel is selected when its red channel is non-zero (grey masks are equal in all channels).
    public static func loadMask(_ url: URL) throws -> ByteMap {
        let rgb = try loadRGB(url)
        return try ByteMap(height: rgb.height, width: rgb.width, values: stride(from: 0, to: rgb.values.count, by: 3).map { rgb.values[$0] })
    }

    /// Writes a PNG with the model label in its metadata (PNG description and a
    /// `magicbokeh:model` note in the comment), as the Python renderer labels its outputs.
    public static func writePNG(_ image: RGBImage, to url: URL, modelLabel: String) throws {
        let cg = try cgImage(from: image)
        guard let destination = CGImageDestinationCreateWithURL(url as CFURL, UTType.png.identifier as CFString, 1, nil) else {
            throw BokehError.io("cannot write \(url.path)")
        }
        let properties: [CFString: Any] = [
            kCGImagePropertyPNGDictionary: [
                kCGImagePropertyPNGDescription: modelLabel,
                kCGImagePropertyPNGSoftware: "MagicBokeh",
                kCGImagePropertyPNGComment: "magicbokeh:model=\(modelLabel)",
            ] as [CFString: Any],
        ]
        CGImageDestinationAddImage(destination, cg, properties as CFDictionary)
        guard CGImageDestinationFinalize(destination) else { throw BokehError.io("writing \(url.path) failed") }
    }
}
#endif

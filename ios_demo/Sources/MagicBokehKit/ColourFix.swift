/// The colour fix: per channel, the output's mean and standard deviation are matched to the
/// input photo's (on `u8 / 255` images), clamped to [0, 1] and truncated back to 8 bits.
/// It undoes the colour drift of the VAE round trip.

/// Per-channel statistics of a [0, 1] image (float32 values, as the reference keeps them).
public struct ChannelStatistics: Sendable, Equatable {
    public var mean: [Float]
    /// `sqrt(unbiased variance + 1e-5)`.
    public var std: [Float]

    public init(mean: [Float], std: [Float]) {
        self.mean = mean
        self.std = std
    }
}

/// The epsilon added to the variance before the square root.
public let colourFixEpsilon: Float = 1e-5

/// Mean and std of each channel of `u8 / 255`.
///
/// The sums run in Double: the reference's float32 reductions are ordered by torch's vector
/// lanes, so neither order is "the" one; Double sums sit within ~1e-7 relative of any of them.
public func channelStatistics(_ image: RGBImage) -> ChannelStatistics {
    let n = image.height * image.width
    var means = [Float](), stds = [Float]()
    for c in 0..<image.channels {
        var sum = 0.0
        var i = c
        while i < image.values.count { sum += Double(unitValue(image.values[i])); i += image.channels }
        let mean = sum / Double(n)
        var squares = 0.0
        i = c
        while i < image.values.count {
            let d = Double(unitValue(image.values[i])) - mean
            squares += d * d
            i += image.channels
        }
        // torch's unbiased variance of a single value is NaN; keep that (the reference does too).
        let variance = n > 1 ? Float(squares / Double(n - 1)) : Float.nan
        means.append(Float(mean))
        stds.append((variance + colourFixEpsilon).squareRoot())
    }
    return ChannelStatistics(mean: means, std: stds)
}

/// `trunc(clamp((y - mean_y) / std_y * std_x + mean_x, 0, 1) * 255)` per value, float32 steps.
public func applyColourFix(_ output: RGBImage, outputStatistics y: ChannelStatistics, inputStatistics x: ChannelStatistics) -> RGBImage {
    var out = output.values
    let channels = output.channels
    for i in 0..<out.count {
        let c = i % channels
        let centred = unitValue(output.values[i]) - y.mean[c]
        let scaled = centred / y.std[c]
        let stretched = scaled * x.std[c]
        var v = stretched + x.mean[c]
        if v < 0 { v = 0 } else if v > 1 { v = 1 }
        let byte = v * Float(255)
        out[i] = byte.isNaN ? 0 : UInt8(byte.rounded(.towardZero))
    }
    return RGBImage(unchecked: output.height, output.width, channels, out)
}

/// The colour fix of `output` against `reference` (same size), returning the statistics used.
public func colourFix(_ output: RGBImage, reference: RGBImage) throws -> (image: RGBImage, output: ChannelStatistics, input: ChannelStatistics) {
    guard output.height == reference.height, output.width == reference.width, output.channels == 3, reference.channels == 3 else {
        throw BokehError.input("colour fix needs two RGB images of one size, got \(output.sizeText)x\(output.channels) and \(reference.sizeText)x\(reference.channels)")
    }
    let y = channelStatistics(output), x = channelStatistics(reference)
    return (applyColourFix(output, outputStatistics: y, inputStatistics: x), y, x)
}

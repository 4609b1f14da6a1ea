import Foundation

/// How closely two 8-bit images agree: the figures the replay check and the tests report.
public struct ByteAgreement: Sendable, CustomStringConvertible {
    public let count: Int
    public let identical: Int
    public let maxAbsoluteDifference: Int

    public init(_ a: [UInt8], _ b: [UInt8]) {
        precondition(a.count == b.count, "compared arrays differ in size")
        var identical = 0, worst = 0
        for (x, y) in zip(a, b) {
            let d = abs(Int(x) - Int(y))
            if d == 0 { identical += 1 }
            worst = max(worst, d)
        }
        count = a.count
        self.identical = identical
        maxAbsoluteDifference = worst
    }

    public var identicalFraction: Double { count == 0 ? 1 : Double(identical) / Double(count) }

    /// Within `maxAbs` everywhere and identical at >= `fraction` of the values (the golden's tolerance).
    public func within(maxAbs: Int = 1, identicalFraction fraction: Double = 0.999) -> Bool {
        maxAbsoluteDifference <= maxAbs && identicalFraction >= fraction
    }

    public var description: String {
        "\(identical) of \(count) values identical (\(String(format: "%.4f", identicalFraction * 100)) %), max |difference| \(maxAbsoluteDifference)"
    }
}

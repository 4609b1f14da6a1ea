import MagicBokehKit
import PhotosUI
import SwiftUI

/// One screen: the photo (tap to focus; hold "Before" to compare), K, render / cancel, save.
struct ContentView: View {
    @Bindable var session: BokehSession
    @State private var pickerItem: PhotosPickerItem?
    @State private var showCamera = false

    var body: some View {
        NavigationStack {
            VStack(spacing: 12) {
                photoView
                status
                controls
            }
            .padding()
            .navigationTitle("MagicBokeh")
            .toolbar {
                ToolbarItemGroup(placement: .topBarTrailing) {
                    PhotosPicker(selection: $pickerItem, matching: .images) { Image(systemName: "photo.on.rectangle") }
                    Button { showCamera = true } label: { Image(systemName: "camera") }
                        .disabled(!UIImagePickerController.isSourceTypeAvailable(.camera))
                }
            }
            .onChange(of: pickerItem) { _, item in
                Task {
                    if let data = try? await item?.loadTransferable(type: Data.self), let image = UIImage(data: data) {
                        await session.setPhoto(image)
                    }
                }
            }
            .sheet(isPresented: $showCamera) {
                CameraPicker { image in Task { await session.setPhoto(image) } }
            }
        }
    }

    @ViewBuilder private var photoView: some View {
        if let photo = session.photo, let shown = try? ImageFiles.cgImage(from: (session.showBefore ? nil : session.result) ?? photo) {
            GeometryReader { geometry in
                let fit = min(geometry.size.width / CGFloat(photo.width), geometry.size.height / CGFloat(photo.height))
                let size = CGSize(width: CGFloat(photo.width) * fit, height: CGFloat(photo.height) * fit)
                ZStack(alignment: .topLeading) {
                    Image(decorative: shown, scale: 1).resizable().frame(width: size.width, height: size.height)
                    if let point = session.focusPoint {
                        Circle().stroke(.yellow, lineWidth: 2).frame(width: 28, height: 28)
                            .position(x: CGFloat(point.x) * fit, y: CGFloat(point.y) * fit)
                    }
                }
                .frame(width: size.width, height: size.height)
                .contentShape(Rectangle())
                .onTapGesture { location in
                    session.focus(atX: Int(location.x / fit), y: Int(location.y / fit))
                }
                .frame(maxWidth: .infinity, maxHeight: .infinity)
            }
        } else {
            ContentUnavailableView("Pick or take a photo", systemImage: "camera.aperture",
                                   description: Text("Then tap the subject to focus on it."))
        }
    }

    @ViewBuilder private var status: some View {
        switch session.phase {
        case .loadingModel: ProgressView("Loading \(session.modelLabel.isEmpty ? "the model" : session.modelLabel)")
        case .estimatingDepth: ProgressView("Estimating depth")
        case .rendering(let completed, let total):
            HStack {
                ProgressView(value: Double(completed), total: Double(max(total, 1))) { Text("Tile \(completed) of \(total)") }
                Button("Cancel", role: .cancel) { session.cancelRender() }
            }
        case .failed(let message): Text(message).foregroundStyle(.red).font(.footnote)
        case .ready:
            Text(session.focusPoint == nil && session.photo != nil ? "Tap the photo to focus" : session.modelLabel)
                .font(.footnote).foregroundStyle(.secondary)
        }
    }

    private var controls: some View {
        VStack {
            HStack {
                Text("K \(Int(session.aperture.rounded()))").monospacedDigit().frame(width: 48, alignment: .leading)
                Slider(value: $session.aperture, in: 1...32, step: 1)
            }
            HStack {
                Button("Render") { session.render() }.buttonStyle(.borderedProminent).disabled(!session.canRender)
                Button("Before") {}
                    .buttonStyle(.bordered)
                    .disabled(session.result == nil)
                    .simultaneousGesture(DragGesture(minimumDistance: 0)
                        .onChanged { _ in session.showBefore = true }
                        .onEnded { _ in session.showBefore = false })
                Button("Save") { Task { await session.save() } }.buttonStyle(.bordered).disabled(session.result == nil)
            }
        }
    }
}

/// The camera, through UIImagePickerController (PhotosPicker cannot capture).
struct CameraPicker: UIViewControllerRepresentable {
    let onImage: (UIImage) -> Void
    @Environment(\.dismiss) private var dismiss

    func makeUIViewController(context: Context) -> UIImagePickerController {
        let picker = UIImagePickerController()
        picker.sourceType = .camera
        picker.delegate = context.coordinator
        return picker
    }

    func updateUIViewController(_ controller: UIImagePickerController, context: Context) {}

    func makeCoordinator() -> Coordinator { Coordinator(self) }

    final class Coordinator: NSObject, UIImagePickerControllerDelegate, UINavigationControllerDelegate {
        let parent: CameraPicker
        init(_ parent: CameraPicker) { self.parent = parent }

        func imagePickerController(_ picker: UIImagePickerController, didFinishPickingMediaWithInfo info: [UIImagePickerController.InfoKey: Any]) {
            if let image = info[.originalImage] as? UIImage { parent.onImage(image) }
            parent.dismiss()
        }

        func imagePickerControllerDidCancel(_ picker: UIImagePickerController) { parent.dismiss() }
    }
}

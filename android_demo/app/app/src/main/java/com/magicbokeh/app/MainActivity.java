package com.magicbokeh.app;

import android.Manifest.permission;
import android.content.ContentValues;
import android.content.pm.PackageManager;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.graphics.Matrix;
import android.net.Uri;
import android.os.Build;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.provider.MediaStore;
import android.view.MotionEvent;
import android.view.View;
import android.widget.Button;
import android.widget.ImageView;
import android.widget.ProgressBar;
import android.widget.SeekBar;
import android.widget.TextView;
import androidx.activity.result.ActivityResultLauncher;
import androidx.activity.result.contract.ActivityResultContracts;
import androidx.appcompat.app.AppCompatActivity;
import androidx.camera.core.CameraSelector;
import androidx.camera.core.ImageCapture;
import androidx.camera.core.ImageCaptureException;
import androidx.camera.core.Preview;
import androidx.camera.lifecycle.ProcessCameraProvider;
import androidx.camera.view.PreviewView;
import androidx.core.content.ContextCompat;
import androidx.exifinterface.media.ExifInterface;
import com.google.common.util.concurrent.ListenableFuture;
import com.magicbokeh.core.BokehPipeline;
import com.magicbokeh.core.CancelledException;
import com.magicbokeh.core.DepthMap;
import com.magicbokeh.core.Focus;
import com.magicbokeh.core.Manifest;
import com.magicbokeh.core.RenderListener;
import com.magicbokeh.core.RenderResult;
import com.magicbokeh.core.RgbImage;
import com.magicbokeh.core.TileModel;
import com.magicbokeh.core.TilePlan;
import java.io.File;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Capture or pick a photo, compute its depth with the depth component, tap to focus, choose K,
 * render off the UI thread with per-tile progress and cancel, hold to compare with the original,
 * save with the model label in the JPEG's metadata. Everything but the UI is android_demo/core
 * and android_demo/jni (tested on the host); this class only wires Android to them.
 */
public final class MainActivity extends AppCompatActivity {
    /** Long sides above this are scaled down before rendering (each 512-px tile costs seconds on a phone CPU). */
    private static final int MAX_SIDE = 2048;
    private static final long HOLD_MS = 250;

    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final Handler ui = new Handler(Looper.getMainLooper());
    private final AtomicBoolean cancel = new AtomicBoolean();

    private PreviewView preview;
    private ImageView photoView;
    private TextView status;
    private ProgressBar progress;
    private TextView kLabel;
    private Button renderButton;
    private ImageCapture imageCapture;

    private Manifest manifest;
    private RgbImage photo;
    private Bitmap photoBitmap;
    private DepthMap depth;
    private Focus focus;
    private Bitmap resultBitmap;
    private int k = 16;
    private boolean rendering;

    private final ActivityResultLauncher<String> pick =
            registerForActivityResult(new ActivityResultContracts.GetContent(), this::onPicked);
    private final ActivityResultLauncher<String> cameraPermission =
            registerForActivityResult(new ActivityResultContracts.RequestPermission(), granted -> {
                if (granted) startCamera();
                else show("camera permission denied: use Pick");
            });

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        preview = findViewById(R.id.preview);
        photoView = findViewById(R.id.photo);
        status = findViewById(R.id.status);
        progress = findViewById(R.id.progress);
        kLabel = findViewById(R.id.k_label);
        renderButton = findViewById(R.id.render);
        ((SeekBar) findViewById(R.id.k_slider)).setOnSeekBarChangeListener(new SeekBar.OnSeekBarChangeListener() {
            @Override
            public void onProgressChanged(SeekBar bar, int value, boolean fromUser) {
                k = value + 1;
                kLabel.setText("K " + k);
            }

            @Override
            public void onStartTrackingTouch(SeekBar bar) {
            }

            @Override
            public void onStopTrackingTouch(SeekBar bar) {
            }
        });
        findViewById(R.id.capture).setOnClickListener(v -> capture());
        findViewById(R.id.pick).setOnClickListener(v -> pick.launch("image/*"));
        renderButton.setOnClickListener(v -> {
            if (rendering) cancel.set(true);
            else render();
        });
        findViewById(R.id.save).setOnClickListener(v -> save());
        photoView.setOnTouchListener(this::onPhotoTouch);

        File artifacts = getExternalFilesDir("artifacts");
        int benchmarkRuns = getIntent().getIntExtra("benchmark", 0);
        worker.execute(() -> {
            try {
                manifest = Models.readManifest(artifacts);
                show("model: " + manifest.config + ", " + manifest.backend + " " + manifest.precision);
                if (benchmarkRuns > 0) {
                    File out = Benchmark.run(manifest, benchmarkRuns, getExternalFilesDir("benchmark"));
                    show("benchmark written to " + out);
                }
            } catch (Exception ex) {
                show("cannot use " + artifacts + ": " + ex.getMessage());
            }
        });
        if (ContextCompat.checkSelfPermission(this, permission.CAMERA) == PackageManager.PERMISSION_GRANTED) startCamera();
        else cameraPermission.launch(permission.CAMERA);
    }

    private void startCamera() {
        ListenableFuture<ProcessCameraProvider> future = ProcessCameraProvider.getInstance(this);
        future.addListener(() -> {
            try {
                ProcessCameraProvider provider = future.get();
                Preview previewCase = new Preview.Builder().build();
                previewCase.setSurfaceProvider(preview.getSurfaceProvider());
                imageCapture = new ImageCapture.Builder().setCaptureMode(ImageCapture.CAPTURE_MODE_MAXIMIZE_QUALITY).build();
                provider.unbindAll();
                provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, previewCase, imageCapture);
            } catch (Exception ex) {
                show("camera unavailable: " + ex.getMessage());
            }
        }, ContextCompat.getMainExecutor(this));
    }

    private void capture() {
        if (imageCapture == null) {
            show("camera not ready");
            return;
        }
        File file = new File(getFilesDir(), "captures/capture.jpg");
        file.getParentFile().mkdirs();
        imageCapture.takePicture(new ImageCapture.OutputFileOptions.Builder(file).build(), worker,
                new ImageCapture.OnImageSavedCallback() {
                    @Override
                    public void onImageSaved(ImageCapture.OutputFileResults results) {
                        loadPhoto(Uri.fromFile(file));
                    }

                    @Override
                    public void onError(ImageCaptureException ex) {
                        show("capture failed: " + ex.getMessage());
                    }
                });
    }

    private void onPicked(Uri uri) {
        if (uri != null) worker.execute(() -> loadPhoto(uri));
    }

    /** On the worker: decode (upright, scaled), then compute depth with the depth component. */
    private void loadPhoto(Uri uri) {
        try {
            Bitmap bitmap;
            int rotation;
            try (InputStream in = getContentResolver().openInputStream(uri)) {
                bitmap = BitmapFactory.decodeStream(in);
            }
            try (InputStream in = getContentResolver().openInputStream(uri)) {
                rotation = new ExifInterface(in).getRotationDegrees();
            }
            if (bitmap == null) throw new IllegalArgumentException("not an image");
            Matrix matrix = new Matrix();
            matrix.postRotate(rotation);
            float scale = Math.min(1f, (float) MAX_SIDE / Math.max(bitmap.getWidth(), bitmap.getHeight()));
            matrix.postScale(scale, scale);
            // The photo the user sees is the photo that is rendered: upright and scaled once, here.
            bitmap = Bitmap.createBitmap(bitmap, 0, 0, bitmap.getWidth(), bitmap.getHeight(), matrix, true);
            photoBitmap = bitmap;
            photo = Bitmaps.toRgb(bitmap);
            focus = null;
            resultBitmap = null;
            Bitmap shown = bitmap;
            ui.post(() -> {
                preview.setVisibility(View.GONE);
                photoView.setVisibility(View.VISIBLE);
                photoView.setImageBitmap(shown);
            });
            show("computing depth (" + photo.width + "x" + photo.height + ")...");
            long start = System.nanoTime();
            depth = Models.estimateDepth(manifest, photo);
            show(String.format("depth in %.1f s; tap the photo to focus", (System.nanoTime() - start) / 1e9));
        } catch (Exception ex) {
            show("cannot load the photo: " + ex.getMessage());
        }
    }

    /** A short tap sets the focus point; holding shows the original while a result is on screen. */
    private boolean onPhotoTouch(View view, MotionEvent event) {
        if (photo == null) return false;
        if (event.getAction() == MotionEvent.ACTION_DOWN && resultBitmap != null) {
            photoView.setImageBitmap(photoBitmap);
        } else if (event.getAction() == MotionEvent.ACTION_UP) {
            if (resultBitmap != null) photoView.setImageBitmap(resultBitmap);
            if (event.getEventTime() - event.getDownTime() < HOLD_MS) {
                int[] xy = toImage(event.getX(), event.getY());
                if (xy != null) {
                    focus = Focus.point(xy[0], xy[1]);
                    show("focus at (" + xy[0] + ", " + xy[1] + "); K " + k + ": press Render");
                }
            }
            view.performClick();
        }
        return true;
    }

    /** View coordinates -> image pixel under fitCenter, or null outside the photo. */
    private int[] toImage(float x, float y) {
        float scale = Math.min((float) photoView.getWidth() / photo.width, (float) photoView.getHeight() / photo.height);
        float left = (photoView.getWidth() - photo.width * scale) / 2, top = (photoView.getHeight() - photo.height * scale) / 2;
        int ix = (int) ((x - left) / scale), iy = (int) ((y - top) / scale);
        return ix >= 0 && iy >= 0 && ix < photo.width && iy < photo.height ? new int[] {ix, iy} : null;
    }

    private void render() {
        if (manifest == null || photo == null || depth == null || focus == null) {
            show("need a model, a photo, its depth and a focus tap first");
            return;
        }
        rendering = true;
        cancel.set(false);
        renderButton.setText(R.string.cancel);
        RgbImage image = photo;
        DepthMap depthMap = depth;
        Focus focusPoint = focus;
        int aperture = k;
        worker.execute(() -> {
            try (TileModel model = Models.openTileModel(manifest, Build.VERSION.SDK_INT >= 31 ? Build.SOC_MODEL : "")) {
                RenderResult result = new BokehPipeline(manifest.config).render(image, depthMap, focusPoint, aperture, model,
                        new RenderListener() {
                            @Override
                            public void onTileDone(int done, int tiles, TilePlan.Box box) {
                                ui.post(() -> {
                                    progress.setMax(tiles);
                                    progress.setProgress(done);
                                });
                                show("tile " + done + " of " + tiles);
                            }

                            @Override
                            public boolean isCancelled() {
                                return cancel.get();
                            }
                        });
                resultBitmap = Bitmaps.toBitmap(result.image);
                Bitmap shown = resultBitmap;
                ui.post(() -> photoView.setImageBitmap(shown));
                show(String.format("rendered %d tiles in %.1f s (%.2f s per tile); hold to compare",
                        result.plan.count(), result.seconds.get("total"), result.seconds.get("tiles") / result.plan.count()));
            } catch (CancelledException ex) {
                show(ex.getMessage());
            } catch (Exception ex) {
                show("render failed: " + ex.getMessage());
            } finally {
                ui.post(() -> {
                    rendering = false;
                    renderButton.setText(R.string.render);
                });
            }
        });
    }

    /** Save as JPEG in Pictures/MagicBokeh with the model label in ImageDescription and the settings in UserComment. */
    private void save() {
        if (resultBitmap == null) {
            show("nothing rendered yet");
            return;
        }
        Bitmap bitmap = resultBitmap;
        worker.execute(() -> {
            try {
                ContentValues values = new ContentValues();
                values.put(MediaStore.Images.Media.DISPLAY_NAME, "magicbokeh_" + System.currentTimeMillis() + ".jpg");
                values.put(MediaStore.Images.Media.MIME_TYPE, "image/jpeg");
                values.put(MediaStore.Images.Media.RELATIVE_PATH, "Pictures/MagicBokeh");
                Uri uri = getContentResolver().insert(MediaStore.Images.Media.EXTERNAL_CONTENT_URI, values);
                if (uri == null) throw new IllegalStateException("MediaStore refused the new image");
                try (OutputStream out = getContentResolver().openOutputStream(uri)) {
                    bitmap.compress(Bitmap.CompressFormat.JPEG, 95, out);
                }
                try (android.os.ParcelFileDescriptor fd = getContentResolver().openFileDescriptor(uri, "rw")) {
                    ExifInterface exif = new ExifInterface(fd.getFileDescriptor());
                    exif.setAttribute(ExifInterface.TAG_IMAGE_DESCRIPTION, "magicbokeh:model " + manifest.modelLabel);
                    exif.setAttribute(ExifInterface.TAG_SOFTWARE, "MagicBokeh Android demo");
                    exif.setAttribute(ExifInterface.TAG_USER_COMMENT, "K=" + k + " focus=" + focus.describe()
                            + " manifest_sha256=" + manifest.manifestSha256);
                    exif.saveAttributes();
                }
                show("saved " + uri);
            } catch (Exception ex) {
                show("save failed: " + ex.getMessage());
            }
        });
    }

    private void show(String text) {
        ui.post(() -> status.setText(text));
    }

    @Override
    protected void onDestroy() {
        cancel.set(true);
        worker.shutdown();
        super.onDestroy();
    }
}

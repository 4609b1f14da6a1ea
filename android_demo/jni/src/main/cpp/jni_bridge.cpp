// JNI bindings of ComponentRunner for com.magicbokeh.jni.ExecuTorchComponent. Every C++ error
// becomes a Java exception with the runner's one-line message:
//   missing file          -> java.io.FileNotFoundException
//   load failure          -> com.magicbokeh.jni.ExecuTorchException
//   wrong input / shape   -> java.lang.IllegalArgumentException
//   failure while running -> com.magicbokeh.jni.ExecuTorchException
#include <jni.h>

#include <string>
#include <vector>

#include "component_runner.h"

using magicbokeh::ComponentRunner;
using magicbokeh::RunnerError;
using magicbokeh::RunnerErrorKind;

namespace {

void throw_java(JNIEnv* env, const char* class_name, const std::string& message) {
  jclass cls = env->FindClass(class_name);
  if (cls == nullptr) return;  // FindClass already raised NoClassDefFoundError
  env->ThrowNew(cls, message.c_str());
}

void throw_runner_error(JNIEnv* env, const RunnerError& error) {
  switch (error.kind()) {
    case RunnerErrorKind::kMissingFile: throw_java(env, "java/io/FileNotFoundException", error.what()); break;
    case RunnerErrorKind::kBadInput: throw_java(env, "java/lang/IllegalArgumentException", error.what()); break;
    default: throw_java(env, "com/magicbokeh/jni/ExecuTorchException", error.what());
  }
}

std::string to_string(JNIEnv* env, jstring text) {
  if (text == nullptr) return "";
  const char* chars = env->GetStringUTFChars(text, nullptr);
  std::string out(chars);
  env->ReleaseStringUTFChars(text, chars);
  return out;
}

ComponentRunner* from_handle(JNIEnv* env, jlong handle) {
  if (handle == 0) throw_java(env, "java/lang/IllegalStateException", "the ExecuTorch component was closed");
  return reinterpret_cast<ComponentRunner*>(handle);
}

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_com_magicbokeh_jni_ExecuTorchComponent_nativeLoad(JNIEnv* env, jclass, jstring path,
                                                                                jstring name) {
  try {
    return reinterpret_cast<jlong>(new ComponentRunner(to_string(env, path), to_string(env, name)));
  } catch (const RunnerError& error) {
    throw_runner_error(env, error);
  } catch (const std::exception& error) {
    throw_java(env, "com/magicbokeh/jni/ExecuTorchException", std::string("unexpected error: ") + error.what());
  }
  return 0;
}

JNIEXPORT jobjectArray JNICALL Java_com_magicbokeh_jni_ExecuTorchComponent_nativeInputShapes(JNIEnv* env, jclass,
                                                                                              jlong handle) {
  ComponentRunner* runner = from_handle(env, handle);
  if (runner == nullptr) return nullptr;
  const auto& shapes = runner->input_shapes();
  jobjectArray out = env->NewObjectArray(static_cast<jsize>(shapes.size()), env->FindClass("[I"), nullptr);
  for (size_t i = 0; i < shapes.size(); ++i) {
    jintArray shape = env->NewIntArray(static_cast<jsize>(shapes[i].size()));
    env->SetIntArrayRegion(shape, 0, static_cast<jsize>(shapes[i].size()), reinterpret_cast<const jint*>(shapes[i].data()));
    env->SetObjectArrayElement(out, static_cast<jsize>(i), shape);
    env->DeleteLocalRef(shape);
  }
  return out;
}

JNIEXPORT jfloatArray JNICALL Java_com_magicbokeh_jni_ExecuTorchComponent_nativeRun(JNIEnv* env, jclass, jlong handle,
                                                                                     jobjectArray inputs,
                                                                                     jobjectArray shapes) {
  ComponentRunner* runner = from_handle(env, handle);
  if (runner == nullptr) return nullptr;
  jsize count = env->GetArrayLength(inputs);
  if (env->GetArrayLength(shapes) != count) {
    throw_java(env, "java/lang/IllegalArgumentException", "one shape per input is needed");
    return nullptr;
  }
  std::vector<std::vector<float>> buffers(count);
  std::vector<const float*> data;
  std::vector<size_t> lengths;
  std::vector<std::vector<int32_t>> dims(count);
  for (jsize i = 0; i < count; ++i) {
    auto array = static_cast<jfloatArray>(env->GetObjectArrayElement(inputs, i));
    auto shape = static_cast<jintArray>(env->GetObjectArrayElement(shapes, i));
    if (array == nullptr || shape == nullptr) {
      throw_java(env, "java/lang/IllegalArgumentException", "component '" + runner->name() + "': input " +
                                                                std::to_string(i) + " or its shape is null");
      return nullptr;
    }
    jsize length = env->GetArrayLength(array);
    buffers[i].resize(length);
    env->GetFloatArrayRegion(array, 0, length, buffers[i].data());
    dims[i].resize(env->GetArrayLength(shape));
    env->GetIntArrayRegion(shape, 0, static_cast<jsize>(dims[i].size()), reinterpret_cast<jint*>(dims[i].data()));
    data.push_back(buffers[i].data());
    lengths.push_back(static_cast<size_t>(length));
    env->DeleteLocalRef(array);
    env->DeleteLocalRef(shape);
  }
  try {
    std::vector<float> out = runner->run(data, lengths, dims, nullptr);
    jfloatArray result = env->NewFloatArray(static_cast<jsize>(out.size()));
    env->SetFloatArrayRegion(result, 0, static_cast<jsize>(out.size()), out.data());
    return result;
  } catch (const RunnerError& error) {
    throw_runner_error(env, error);
  } catch (const std::exception& error) {
    throw_java(env, "com/magicbokeh/jni/ExecuTorchException", std::string("unexpected error: ") + error.what());
  }
  return nullptr;
}

JNIEXPORT void JNICALL Java_com_magicbokeh_jni_ExecuTorchComponent_nativeClose(JNIEnv*, jclass, jlong handle) {
  delete reinterpret_cast<ComponentRunner*>(handle);
}

}  // extern "C"

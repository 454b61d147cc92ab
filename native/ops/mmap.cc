// Memory-mapped checkpoint files.
//   mapFile(path, { populate?, advice? }) -> MappedFile { path, byteLength, closed, close(), advise(), verify() }
//   mappingSet(mappings) -> MappingSet { verify(), close() } (the mapped files checked together)
//   tensorFromMapping(mapping, byteOffset, dtype, shape) -> Tensor (CPU, shares the mapped pages)
// Tensor bytes never pass through the JS heap. A tensor keeps the mapping alive through its
// storage's release function (a shared_ptr to the MappedFile), so close() only drops the
// handle's reference: the file is unmapped when the last tensor over it is gone.
//
// Alignment: safetensors data starts at 8 + header length and tensors are packed back to back,
// so a tensor is at best 8-byte aligned and often only 2-byte aligned. The CPU kernels use
// unaligned SIMD loads, but C++ (and the auto-vectoriser) assumes element alignment for typed
// pointers, so a tensor whose offset is not a multiple of its element size is copied into
// pool memory (one memcpy, in native code). Files written by lib/safetensors.ts order tensors by
// element size and pad the header to 8 bytes, so they are always mapped in place.
#include <cstring>

#include "../binding.h"
#include "../mmap.h"

namespace lc {

namespace {

struct MapHandle {
  std::shared_ptr<MappedFile> file;  // reset by close()
};

// Marks the External that carries a MapHandle, so a forged object is rejected.
const napi_type_tag kMapTag = {0x6c6f6e6763617466ULL, 0x6d6d61702d763031ULL};

MapHandle* handle_of(Napi::Value v, const char* op) {
  MapHandle* h = handle_in<MapHandle>(v, kMapTag);
  if (!h) fail(Code::E_ARGUMENT, "%s: 'mapping' must be a MappedFile from mapFile()", op);
  return h;
}
// The mapping of a MappedFile that is still open (E_DISPOSED after close()).
const std::shared_ptr<MappedFile>& open_file_of(Napi::Value v, const char* op) {
  const MapHandle* h = handle_of(v, op);
  if (!h->file) fail(Code::E_DISPOSED, "%s: mapping was closed", op);
  return h->file;
}

MappedFile::Advice parse_advice(const std::string& s, const char* op) {
  if (s == "normal") return MappedFile::Advice::Normal;
  if (s == "random") return MappedFile::Advice::Random;
  if (s == "sequential") return MappedFile::Advice::Sequential;
  if (s == "willneed") return MappedFile::Advice::WillNeed;
  if (s == "dontneed") return MappedFile::Advice::DontNeed;
  fail(Code::E_ARGUMENT, "%s: unknown advice '%s' (normal, random, sequential, willneed or dontneed)", op, s.c_str());
}

int64_t nonneg_integer(Napi::Value v, const char* op, const char* name) {
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0) || d != static_cast<double>(static_cast<int64_t>(d)) || d > 9007199254740991.0)
    fail(Code::E_ARGUMENT, "%s: '%s' must be a non-negative integer", op, name);
  return static_cast<int64_t>(d);
}

Napi::Value Closed(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    MapHandle* h = handle_of(info.This(), "MappedFile.closed");
    return Napi::Boolean::New(info.Env(), !h->file);
  });
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    handle_of(info.This(), "MappedFile.close")->file.reset();
    return info.Env().Undefined();
  });
}

// advise(advice, offset = 0, length = byteLength - offset)
Napi::Value Advise(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const char* op = "MappedFile.advise";
    MappedFile& file = *open_file_of(info.This(), op);
    OpArgs a(info, op);
    MappedFile::Advice adv = parse_advice(a.string(0, "advice"), op);
    int64_t off = a.present(1) ? nonneg_integer(info[1], op, "offset") : 0;
    int64_t size = static_cast<int64_t>(file.size());
    int64_t len = a.present(2) ? nonneg_integer(info[2], op, "length") : (off < size ? size - off : 0);
    file.advise(static_cast<size_t>(off), static_cast<size_t>(len), adv);
    return info.Env().Undefined();
  });
}

[[noreturn]] void fail_changed(const MappedFile& file, const std::string& what) {
  fail(Code::E_CHECKPOINT, "'%s' changed on disk since it was mapped (%s); reload the model", file.path().c_str(), what.c_str());
}

// verify(): the mapped file and its path (MappedFile::changed).
Napi::Value Verify(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const MappedFile& file = *open_file_of(info.This(), "MappedFile.verify");
    const std::string what = file.changed(true);
    if (!what.empty()) fail_changed(file, what);
    return info.Env().Undefined();
  });
}

// mappingSet(mappings) -> MappingSet { verify(), close() }: the check before every CPU forward
// pass, the mapped files only (no path lookups), all in one call (MappedFileSet). The set holds its
// files' mappings until close().
struct SetHandle {
  std::unique_ptr<MappedFileSet> set;  // reset by close()
};
const napi_type_tag kSetTag = {0x6c6f6e6763617466ULL, 0x6d6d617073657431ULL};

SetHandle* set_of(Napi::Value v, const char* op) {
  SetHandle* h = handle_in<SetHandle>(v, kSetTag);
  if (!h) fail(Code::E_ARGUMENT, "%s: 'this' must be a MappingSet from mappingSet()", op);
  return h;
}

Napi::Value SetVerify(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const char* op = "MappingSet.verify";
    SetHandle* h = set_of(info.This(), op);
    if (!h->set) fail(Code::E_DISPOSED, "%s: the set was closed", op);
    const auto [file, what] = h->set->first_changed();
    if (file) fail_changed(*file, what);
    return info.Env().Undefined();
  });
}

Napi::Value SetClose(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    set_of(info.This(), "MappingSet.close")->set.reset();
    return info.Env().Undefined();
  });
}

Napi::Value MappingSet(const Napi::CallbackInfo& info) {
  const char* op = "mappingSet";
  if (info.Length() < 1 || !info[0].IsArray()) fail(Code::E_ARGUMENT, "%s: 'mappings' must be an array of MappedFile", op);
  Napi::Array list = info[0].As<Napi::Array>();
  std::vector<std::shared_ptr<MappedFile>> files;
  for (uint32_t i = 0; i < list.Length(); ++i) files.push_back(open_file_of(list.Get(i), op));
  Napi::Env env = info.Env();
  Napi::Object obj = handle_object(env, new SetHandle{std::make_unique<MappedFileSet>(std::move(files))}, kSetTag);
  obj.DefineProperties({
      Napi::PropertyDescriptor::Function(env, obj, "verify", SetVerify, napi_default),
      Napi::PropertyDescriptor::Function(env, obj, "close", SetClose, napi_default),
  });
  return obj;
}

Napi::Value MapFile(const Napi::CallbackInfo& info) {
  const char* op = "mapFile";
  OpArgs a(info, op);
  std::string path = a.string(0, "path");
  if (path.empty()) fail(Code::E_ARGUMENT, "%s: 'path' is empty", op);
  MappedFile::Options opts;
  std::string advice;
  if (a.present(1)) {
    if (!info[1].IsObject()) fail(Code::E_ARGUMENT, "%s: options must be an object", op);
    Napi::Object o = info[1].As<Napi::Object>();
    Napi::Value p = o.Get("populate");
    if (!p.IsUndefined()) {
      if (!p.IsBoolean()) fail(Code::E_ARGUMENT, "%s: options.populate must be a boolean", op);
      opts.populate = p.As<Napi::Boolean>().Value();
    }
    Napi::Value ad = o.Get("advice");
    if (!ad.IsUndefined()) {
      if (!ad.IsString()) fail(Code::E_ARGUMENT, "%s: options.advice must be a string", op);
      advice = ad.As<Napi::String>().Utf8Value();
      parse_advice(advice, op);
    }
  }
  std::shared_ptr<MappedFile> file = MappedFile::open(path, opts);
  if (!advice.empty()) file->advise(0, file->size(), parse_advice(advice, op));

  Napi::Env env = info.Env();
  Napi::Object obj = handle_object(env, new MapHandle{file}, kMapTag);
  obj.DefineProperties({
      Napi::PropertyDescriptor::Value("path", Napi::String::New(env, path), napi_enumerable),
      Napi::PropertyDescriptor::Value("byteLength", Napi::Number::New(env, static_cast<double>(file->size())), napi_enumerable),
      Napi::PropertyDescriptor::Value("writable", Napi::Boolean::New(env, file->writable()), napi_enumerable),
      Napi::PropertyDescriptor::Accessor(env, obj, "closed", Closed, napi_enumerable),
      Napi::PropertyDescriptor::Function(env, obj, "close", Close, napi_default),
      Napi::PropertyDescriptor::Function(env, obj, "advise", Advise, napi_default),
      Napi::PropertyDescriptor::Function(env, obj, "verify", Verify, napi_default),
  });
  return obj;
}

Napi::Value TensorFromMapping(const Napi::CallbackInfo& info) {
  const char* op = "tensorFromMapping";
  OpArgs a(info, op);
  std::shared_ptr<MappedFile> file = open_file_of(a.present(0) ? info[0] : info.Env().Undefined(), op);
  if (!a.present(1)) fail(Code::E_ARGUMENT, "%s: argument 'byteOffset' is missing", op);
  int64_t offset = nonneg_integer(info[1], op, "byteOffset");
  std::string dts = a.string(2, "dtype");
  DType dt;
  if (!dtype_from_name(dts.c_str(), &dt))
    fail(Code::E_DTYPE, "%s: unknown dtype '%s' (expected f32, bf16, f16, fp8_e4m3, int8, int32 or int64)", op, dts.c_str());
  if (!a.present(3) || !info[3].IsArray()) fail(Code::E_ARGUMENT, "%s: 'shape' must be an array of non-negative integers", op);
  Napi::Array sa = info[3].As<Napi::Array>();
  std::vector<int64_t> shape;
  int64_t numel = 1;
  for (uint32_t i = 0; i < sa.Length(); ++i) {
    int64_t d = nonneg_integer(sa.Get(i), op, "shape element");
    shape.push_back(d);
    if (d != 0 && numel > (int64_t{1} << 53) / d) fail(Code::E_SHAPE, "%s: shape %s is too large", op, shape_str(shape).c_str());
    numel *= d;
  }
  int64_t nbytes = numel * dtype_size(dt);
  int64_t size = static_cast<int64_t>(file->size());
  if (offset > size || nbytes > size - offset)
    fail(Code::E_CHECKPOINT, "%s: %s %s at byte %lld needs %lld bytes but '%s' has only %lld", op, dtype_name(dt),
         shape_str(shape).c_str(), static_cast<long long>(offset), static_cast<long long>(nbytes), file->path().c_str(),
         static_cast<long long>(size));

  Tensor t;
  t.dtype = dt;
  t.shape = shape;
  uint8_t* p = file->data() ? file->data() + offset : nullptr;
  if (nbytes == 0 || reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(dtype_size(dt)) != 0) {
    // Misaligned for its element type (or empty): an aligned private copy.
    t = empty_tensor(Device{}, dt, shape);
    if (nbytes) std::memcpy(t.data(), p, static_cast<size_t>(nbytes));
  } else {
    t.storage = external_storage(Device{}, p, static_cast<size_t>(nbytes), [file]() {});
    t.storage->file_mapped = true;
  }
  return TensorWrap::Wrap(info.Env(), t);
}

}  // namespace

LC_REGISTER_OP("mapFile", MapFile);
LC_REGISTER_OP("tensorFromMapping", TensorFromMapping);
LC_REGISTER_OP("mappingSet", MappingSet);

}  // namespace lc

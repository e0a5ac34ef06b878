#include "runtime/rankd/rank_proto.h"

#include "absl/strings/str_cat.h"

namespace came::rankd {

absl::StatusOr<DType> DTypeFromProto(v1::DType t, const std::string& who) {
  switch (t) {
    case v1::DTYPE_FLOAT32: return DType::kFloat32;
    case v1::DTYPE_BFLOAT16: return DType::kBFloat16;
    case v1::DTYPE_FLOAT16: return DType::kFloat16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": unknown dtype ", static_cast<int>(t),
                       " (expected DTYPE_FLOAT32, DTYPE_BFLOAT16 or DTYPE_FLOAT16)"));
  }
}

v1::DType DTypeToProto(DType t) {
  switch (t) {
    case DType::kFloat32: return v1::DTYPE_FLOAT32;
    case DType::kBFloat16: return v1::DTYPE_BFLOAT16;
    case DType::kFloat16: return v1::DTYPE_FLOAT16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

void HyperToProto(const CameHyper& h, v1::CameHyperparameters* p) {
  p->set_lr(h.lr);
  p->set_eps1(h.eps1);
  p->set_eps2(h.eps2);
  p->set_clip_threshold(h.clip_threshold);
  p->set_beta1(h.beta1);
  p->set_beta2(h.beta2);
  p->set_beta3(h.beta3);
  p->set_weight_decay(h.weight_decay);
}

HyperOverride HyperOverrideFromProto(const v1::CameHyperparameters& h) {
  HyperOverride o;
  if (h.has_lr()) o.lr = h.lr();
  if (h.has_eps1()) o.eps1 = h.eps1();
  if (h.has_eps2()) o.eps2 = h.eps2();
  if (h.has_clip_threshold()) o.clip_threshold = h.clip_threshold();
  if (h.has_beta1()) o.beta1 = h.beta1();
  if (h.has_beta2()) o.beta2 = h.beta2();
  if (h.has_beta3()) o.beta3 = h.beta3();
  if (h.has_weight_decay()) o.weight_decay = h.weight_decay();
  return o;
}

absl::StatusOr<Manifest> ManifestFromProto(const v1::AttachRequest& req, const CameHyper& defaults) {
  Manifest m;
  m.tensors.reserve(req.tensors_size());
  for (int i = 0; i < req.tensors_size(); ++i) {
    const v1::TensorSpec& t = req.tensors(i);
    TensorSpec spec;
    spec.name = t.name();
    spec.shape.assign(t.shape().begin(), t.shape().end());
    auto dtype = DTypeFromProto(t.dtype(), absl::StrCat("tensor ", i, " '", t.name().substr(0, 64), "'"));
    if (!dtype.ok()) return dtype.status();
    spec.dtype = *dtype;
    spec.group = t.group();
    m.tensors.push_back(std::move(spec));
  }
  for (const v1::ParamGroup& g : req.groups()) {
    const v1::CameHyperparameters& h = g.hyperparameters();
    CameHyper c = defaults;
    if (h.has_lr()) c.lr = h.lr();
    if (h.has_eps1()) c.eps1 = h.eps1();
    if (h.has_eps2()) c.eps2 = h.eps2();
    if (h.has_clip_threshold()) c.clip_threshold = h.clip_threshold();
    if (h.has_beta1()) c.beta1 = h.beta1();
    if (h.has_beta2()) c.beta2 = h.beta2();
    if (h.has_beta3()) c.beta3 = h.beta3();
    if (h.has_weight_decay()) c.weight_decay = h.weight_decay();
    m.groups.push_back(c);
  }
  return m;
}

v1::AttachRequest ManifestToProto(const Manifest& manifest) {
  v1::AttachRequest req;
  for (const TensorSpec& t : manifest.tensors) {
    v1::TensorSpec* s = req.add_tensors();
    s->set_name(t.name);
    for (int64_t d : t.shape) s->add_shape(d);
    s->set_dtype(DTypeToProto(t.dtype));
    s->set_group(t.group);
  }
  for (const CameHyper& h : manifest.groups) HyperToProto(h, req.add_groups()->mutable_hyperparameters());
  return req;
}

}  // namespace came::rankd

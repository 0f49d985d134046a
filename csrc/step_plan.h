// NOTE: [the step plan in C++]
// A step over many small tensors is bound by what it costs per tensor on the host: Python building and
// checking lists, and the binding converting each list element. A StepPlan holds one parameter group's
// tensor lists on the C++ side, built once by gradfused/optim/base.py from its step plan (NOTE: [the step
// plan]). Each step then crosses into C++ with O(1) arguments:
//   plan.gather()            reads every parameter's .grad in C++ and checks that the gradients are the
//                            ones the plan was built for (present where they were, same dtype, layout,
//                            device and shape); false sends the step down the checked Python path;
//   <op>.plan(plan, bucket)  runs the usual op on the bucket's lists, with the gathered gradients.
// gather() runs for every group before any op, so a refused step writes nothing. The plan holds the
// state *tensors*: base.py rebuilds it when the state changes (load_state_dict, new state), and a state
// tensor replaced by hand instead of updated in place is not seen by a live plan.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/custom_class.h>

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace gf {
namespace ops {

struct StepPlan : torch::CustomClassHolder {
  struct Bucket {
    std::vector<int64_t> members;                 // indices into group_params
    at::ScalarType grad_dtype;                    // the dtype every member's gradient must have
    std::vector<std::vector<at::Tensor>> lists;   // the op's lists: params, [grads], states..., steps
    std::vector<std::vector<int64_t>> strides;    // each member's strides when the plan was built
  };

  // `group_params`: every parameter of the group, in order.
  explicit StepPlan(std::vector<at::Tensor> group_params)
      : params_(std::move(group_params)), stepped_(params_.size(), false) {}

  // A bucket stepped by one op call, whose lists follow with add_list (the op's lists after the gradients).
  void add_bucket(std::vector<int64_t> members, at::ScalarType grad_dtype) {
    Bucket b{std::move(members), grad_dtype, {{}, {}}, {}};  // params, then the gradients' slot
    for (int64_t m : b.members) {
      TORCH_CHECK(m >= 0 && m < int64_t(params_.size()), "StepPlan.add_bucket: member ", m, " out of range");
      b.lists[0].push_back(params_[size_t(m)]);
      b.strides.push_back(params_[size_t(m)].strides().vec());
      stepped_[size_t(m)] = true;
    }
    buckets_.push_back(std::move(b));
  }
  void add_list(int64_t bucket, std::vector<at::Tensor> list) {
    Bucket& b = at_bucket(bucket);
    TORCH_CHECK(list.empty() || list.size() == b.members.size(), "StepPlan.add_list: ", list.size(),
                " tensors for a bucket of ", b.members.size());
    b.lists.push_back(std::move(list));
  }

  // Reads the gradients; true if every parameter the plan steps has the gradient it expects, no other
  // parameter has one, and no parameter changed its layout (`param.data = x.to(channels_last)`: its 8-bit
  // codes must then be encoded again in the new order, on the checked path). Touches nothing.
  bool gather() {
    for (size_t i = 0; i < params_.size(); ++i)
      if (params_[i].grad().defined() != bool(stepped_[i])) return false;
    for (Bucket& b : buckets_) {
      std::vector<at::Tensor>& grads = b.lists[1];
      grads.clear();
      for (size_t k = 0; k < b.members.size(); ++k) {
        const at::Tensor& p = params_[size_t(b.members[k])];
        const at::Tensor& g = p.grad();
        if (g.layout() != at::kStrided || g.scalar_type() != b.grad_dtype || g.device() != p.device() ||
            g.sizes() != p.sizes() || p.strides() != at::IntArrayRef(b.strides[k]))
          return false;
        grads.push_back(g);
      }
    }
    return true;
  }

  // The bucket's lists with its gathered gradients, valid until release(bucket).
  const std::vector<std::vector<at::Tensor>>& lists(int64_t bucket) {
    Bucket& b = at_bucket(bucket);
    TORCH_CHECK(b.lists[1].size() == b.members.size(), "StepPlan: gather() before each step");
    return b.lists;
  }
  // The bucket's gathered gradients (GradientAlignment's statistics read them before the update).
  std::vector<at::Tensor> grads(int64_t bucket) { return lists(bucket)[1]; }
  // Lets go of the bucket's gradients, so that a later zero_grad(set_to_none=True) frees them.
  void release(int64_t bucket) { at_bucket(bucket).lists[1].clear(); }

 private:
  Bucket& at_bucket(int64_t bucket) {
    TORCH_CHECK(bucket >= 0 && bucket < int64_t(buckets_.size()), "StepPlan: no bucket ", bucket);
    return buckets_[size_t(bucket)];
  }

  std::vector<at::Tensor> params_;
  std::vector<bool> stepped_;
  std::vector<Bucket> buckets_;
};

// ---- the `.plan` overload of an update op, from the op's own signature ----

template <class... T> struct TypeList {};
// The arguments after the first N (tensor lists) of an op's signature.
template <size_t N, class Sig> struct AfterLists;
template <class... Rest> struct AfterLists<0, void(Rest...)> { using type = TypeList<Rest...>; };
template <size_t N, class First, class... Rest>
  requires(N > 0)
struct AfterLists<N, void(First, Rest...)> : AfterLists<N - 1, void(Rest...)> {};

template <class Sig> constexpr size_t count_leading_lists() {
  return []<class... A>(void (*)(A...)) {
    constexpr bool is_list[] = {std::is_same_v<A, at::TensorList>..., false};
    size_t n = 0;
    while (is_list[n]) ++n;
    return n;
  }(static_cast<Sig*>(nullptr));
}

// Sig: the list op's function type (backend-independent); Op::name and Op::overload name it. `call` takes
// the plan and a bucket in place of the lists, then forwards every other argument unchanged to the list
// op, through the dispatcher (which picks the backend from the tensors' device).
template <class Sig, class Op, size_t kLists = count_leading_lists<Sig>(),
          class Rest = typename AfterLists<kLists, Sig>::type, class Idx = std::make_index_sequence<kLists>>
struct PlanOverload;

template <class Sig, class Op, size_t kLists, class... Rest, size_t... I>
struct PlanOverload<Sig, Op, kLists, TypeList<Rest...>, std::index_sequence<I...>> {
  static void call(const c10::intrusive_ptr<StepPlan>& plan, int64_t bucket, Rest... rest) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(Op::name, Op::overload).template typed<Sig>();
    const std::vector<std::vector<at::Tensor>>& lists = plan->lists(bucket);
    TORCH_CHECK(lists.size() == kLists, Op::name, ".plan: the plan has ", lists.size(), " lists, the op takes ",
                kLists);
    struct Release {  // also when the op throws
      StepPlan& plan;
      int64_t bucket;
      ~Release() { plan.release(bucket); }
    } release{*plan, bucket};
    op.call(at::TensorList(lists[I])..., std::forward<Rest>(rest)...);
  }
};

}  // namespace ops
}  // namespace gf

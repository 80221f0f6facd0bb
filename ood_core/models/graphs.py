"""The adapter for graph files: exported programs (torch.export) and TorchScript (torch.jit).

An exported program's module is an fx graph of aten ops, with no nn.Linear or nn.ReLU modules for hooks to hold;
`rewrite_exported` gives it some (the last linear op as an nn.Linear sharing its weights, an nn.Identity tap on the
Grad-CAM layer's output, an nn.ReLU per ReLU op), after which `ExportedClassifier` reads it exactly as
`HookedClassifier` reads any module. TorchScript modules refuse hooks, so `ScriptClassifier` adds outputs to the
frozen graph instead. Both find the head as the last linear op and the Grad-CAM layer as the end of the chain of
per-element ops (batch norm, ReLU, residual add, ...) after the last convolution.
"""
from __future__ import annotations

import operator
import warnings
from typing import Optional

import torch
from torch import nn

from .foreign import (ForeignClassifier, HookedClassifier, InputTransform, check_logits, describe_failure, pad_to,
                      same_logits)

# ops that keep a convolution's feature map (same shape, elementwise or per channel): the Grad-CAM layer is the end
# of the chain of these after the last convolution
_CHAIN_OPS = ("batch_norm", "relu", "relu_", "add", "add_", "mul", "mul_", "hardtanh", "hardtanh_", "relu6",
              "silu", "silu_", "gelu", "hardswish", "hardswish_", "sigmoid", "dropout", "clone", "contiguous",
              "native_batch_norm", "_native_batch_norm_legit_no_training", "leaky_relu", "leaky_relu_", "elu")


class ExportedClassifier(HookedClassifier):
    """A `torch.export` program (ExportedProgram.module()), rewritten so hooks can read it: the last linear op
    (aten.linear, or aten.addmm of a transposed weight) becomes an nn.Linear module sharing its weights, the
    Grad-CAM layer's output passes through an nn.Identity tap, and each aten.relu op becomes an nn.ReLU module.

    The train/eval flag of an exported program is fixed at export (its module refuses train() and eval()), so the
    flag is set on the modules without calling their train()."""

    HEAD, CONV = "ood_head", "ood_conv"

    def __init__(self, program_module: torch.fx.GraphModule, prep: InputTransform, probe: torch.Tensor):
        gm, notes, batch, names = rewrite_exported(program_module)
        if batch is not None:
            batch = _fixed_batch(gm, prep, probe, batch)
        super().__init__(gm, prep, probe, self.HEAD if hasattr(gm, self.HEAD) else None,
                         self.CONV if hasattr(gm, self.CONV) else None, batch)
        if self.found.head:
            self.found.head = f"{names['head']}, the program's last linear op"
        if self.found.conv:
            self.found.conv = f"node {names['conv']}, the end of the chain after the program's last convolution"
        self.found.notes += notes
        if batch is not None:
            self.found.notes.append(f"the program was exported for batches of exactly {batch} image(s): inputs "
                                    "run in chunks of that size (export with a dynamic batch dimension, "
                                    "torch.export.Dim, for speed)")

    def train(self, mode: bool = True) -> "ExportedClassifier":
        for m in self.modules():
            m.training = mode
        return self


def _fixed_batch(gm: nn.Module, prep: InputTransform, probe: torch.Tensor, batch: int) -> Optional[int]:
    """The batch size an exported program must run at: None when it runs any (a batch of another size gives the
    same logits as chunks of the size it was exported with, its shape checks removed), else that size."""
    n = batch + 1
    x = prep(pad_to(probe, n))
    try:
        with torch.no_grad():
            fixed = torch.cat([gm(pad_to(x[i:i + batch], batch))[: len(x[i:i + batch])]
                               for i in range(0, n, batch)])
            free = gm(x)
        if isinstance(free, torch.Tensor) and same_logits(free, fixed):
            return None
    except Exception:  # shapes baked into the graph (view(1, -1), ...): the fixed size it is
        pass
    return batch


def _op_name(target) -> str:
    """'relu_' for torch.ops.aten.relu_.default, '' for anything else."""
    return target.__name__.split(".")[0] if isinstance(target, torch._ops.OpOverload) else ""


def rewrite_exported(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[str], Optional[int], dict]:
    """Make an exported program's module readable by hooks (see ExportedClassifier). Returns the module, notes,
    the batch size the program was specialised on (None when its batch dimension is dynamic) and the names of
    what became the head (its weight's owner, e.g. "fc") and the Grad-CAM layer (the graph node)."""
    graph = gm.graph
    notes: list[str] = []
    names = {"head": "", "conv": ""}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    batch = None
    if placeholders:
        val = placeholders[0].meta.get("val")
        if val is not None and hasattr(val, "shape") and len(val.shape) and isinstance(val.shape[0], int):
            batch = int(val.shape[0])
    for node in list(graph.nodes):  # input shape checks: the adapter checks shapes itself (see _fixed_batch)
        if node.op == "call_module" and str(node.target) == "_guards_fn" and not node.users:
            graph.erase_node(node)
    end = _chain_end_fx(graph)
    if end is not None:
        names["conv"] = end.name
        gm.add_submodule(ExportedClassifier.CONV, nn.Identity())
        with graph.inserting_after(end):
            tap = graph.call_module(ExportedClassifier.CONV, (end,))
        end.replace_all_uses_with(tap, delete_user_cb=lambda u: u is not tap)
    linears = [n for n in graph.nodes if n.op == "call_function" and _op_name(n.target) in ("linear", "addmm")]
    if linears:
        head = _as_linear_module(gm, linears[-1])
        if head is None:
            notes.append("the last linear op's weights are not constants of the program, so it has no head")
        else:
            node, x, layer, names["head"] = head
            gm.add_submodule(ExportedClassifier.HEAD, layer)
            with graph.inserting_before(node):
                call = graph.call_module(ExportedClassifier.HEAD, (x,))
            node.replace_all_uses_with(call)
            graph.erase_node(node)
    relus = [n for n in graph.nodes if n.op == "call_function" and _op_name(n.target) in ("relu", "relu_")]
    for i, node in enumerate(relus):
        name = f"ood_relu{i}"
        gm.add_submodule(name, nn.ReLU(inplace=_op_name(node.target) == "relu_"))
        with graph.inserting_before(node):
            call = graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return gm, notes, batch, names


def _chain_end_fx(graph: torch.fx.Graph):
    """The node whose output is the Grad-CAM layer's: the last convolution, followed while it feeds exactly one
    chain op (batch norm, ReLU, residual add, ...; a tuple-returning batch norm through its item 0); None when
    the graph has no convolution giving a 4-d tensor."""
    convs = [n for n in graph.nodes if n.op == "call_function" and _op_name(n.target) in ("conv2d", "convolution")]
    if not convs:
        return None
    end = node = convs[-1]
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.op != "call_function":
            break
        if user.target is operator.getitem and user.args[1] == 0:
            node = user
        elif _op_name(user.target) in _CHAIN_OPS:
            node = user
        else:
            break
        if _is_4d(node):
            end = node
    return end if _is_4d(end) else None


def _is_4d(node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dim() == 4


def _attr(gm: nn.Module, node) -> Optional[torch.Tensor]:
    """The tensor a get_attr node reads, or None."""
    if getattr(node, "op", None) != "get_attr":
        return None
    obj = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def _as_linear_module(gm: nn.Module, node) -> Optional[tuple]:
    """(node, input node, nn.Linear sharing the op's weight and bias, the weight's owner) for
    aten.linear(x, W, b) or aten.addmm(b, x, t(W)); None when the weights are not the program's own tensors."""
    op = _op_name(node.target)
    if op == "linear":
        x, w_node = node.args[0], node.args[1]
        b_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        weight = _attr(gm, w_node)
        owner = str(getattr(w_node, "target", ""))
    else:
        b_node, x, wt = node.args[0], node.args[1], node.args[2]
        if getattr(wt, "op", None) != "call_function" or _op_name(wt.target) not in ("t", "permute", "transpose"):
            return None
        weight = _attr(gm, wt.args[0])
        owner = str(getattr(wt.args[0], "target", ""))
    bias = _attr(gm, b_node) if b_node is not None else None
    if weight is None or weight.dim() != 2 or (b_node is not None and bias is None):
        return None
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
    return node, x, layer, owner.rsplit(".", 1)[0] if owner.endswith(".weight") else owner or node.name


class _FunctionCache(dict):
    """Graph functions per device; a copy of the model starts empty and rebuilds them (they cannot be copied)."""

    def __deepcopy__(self, memo) -> "_FunctionCache":
        return _FunctionCache()

    def __reduce__(self):
        return (_FunctionCache, ())


def _kind(node) -> str:
    """'linear' for an aten::linear node."""
    return node.kind().split("::")[-1]


class ScriptClassifier(ForeignClassifier):
    """A TorchScript model. Hooks are not supported on ScriptModules, so the frozen forward graph (weights as
    constants) is given extra outputs: the input of its last top-level linear op (features), the end of the chain
    after its last convolution (Grad-CAM, feature maps) and its ReLU outputs (Gram). The Grad-CAM layer is an
    nn.Identity tap the feature map passes on its way out, so captum can hook it; the gradient flows through the
    graph. Graph functions are built once per device, from the module moved there. When the graph cannot be given
    outputs (ops inside control flow, attributes that do not freeze), the model serves its logits alone."""

    def __init__(self, net: torch.jit.ScriptModule, prep: InputTransform, probe: torch.Tensor):
        super().__init__(prep, None)
        self.net = net.eval()
        self.conv_tap = nn.Identity()
        self._head: Optional[nn.Linear] = None
        self._fns = _FunctionCache()
        self._outputs = ("logits",)  # what the main graph function returns, in order
        self._analyse(probe)

    def train(self, mode: bool = True) -> "ScriptClassifier":
        super().train(mode)
        self._fns = _FunctionCache()
        return self

    def _head_module(self) -> Optional[nn.Linear]:
        return self._head

    def _conv_module(self) -> Optional[nn.Module]:
        return self.conv_tap

    def _frozen_graph(self):
        """A copy of the frozen module's forward graph and its top-level nodes."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; it still works
            frozen = torch.jit.freeze(self.net.eval(), optimize_numerics=False)
        graph = frozen.graph.copy()
        return graph, list(graph.nodes())

    def _analyse(self, probe: torch.Tensor) -> None:
        x = self.prep(probe)
        with torch.no_grad():
            logits = check_logits(self.net(x), "The TorchScript model")
        _, nodes = self._frozen_graph()
        linear = [n for n in nodes if _kind(n) in ("linear", "addmm")]
        convs = [n for n in nodes if _kind(n) in ("conv2d", "_convolution", "convolution")]
        head_reason = ("the TorchScript graph has no linear op at its top level (no nn.Linear, or one inside control "
                       "flow), so feature- and head-based detectors do not apply")
        if linear:
            self._head = self._script_linear(linear[-1])
            if self._head is None:
                head_reason = ("the TorchScript graph's last linear op has no constant weights to serve as the "
                               "head, so feature- and head-based detectors do not apply")
        conv_reason = ("the TorchScript graph has no convolution at its top level, so Grad-CAM and the feature-map "
                       "views do not apply")
        self._outputs = ("logits",) + (("features",) if self._head is not None else ()) + (("maps",) if convs else ())
        try:
            with torch.no_grad():
                z, got = self._pass(x, ("features", "maps"))
                relu_layers = sum(1 for t in self._pass(x, ("relu",))[1]["relu"] if t.dim() == 4)
        except Exception as e:  # the graph would not take extra outputs: the logits alone, with the reason
            reason = (f"the TorchScript graph could not be given extra outputs ({describe_failure(e)}), so only "
                      "its logits are used")
            self._head, self._outputs, self._fns = None, (), _FunctionCache()
            self._finish(logits, False, reason, False, reason, 0, self._dropout_reason())
            return
        head_ok = False
        if self._head is not None:
            h = got["features"][-1]
            with torch.no_grad():
                again = self._head(h) if h.dim() == 2 and h.shape[1] == self._head.in_features else None
            if again is not None and same_logits(again, logits) and same_logits(z, logits):
                head_ok = True
                self.found.head = "the last linear op of the TorchScript graph"
                self.found.feature_dim = int(h.shape[1])
            else:
                head_reason = ("the TorchScript model's logits are not the output of its last linear op, so its "
                               "input is not the penultimate features and feature- and head-based detectors do not "
                               "apply")
        if convs:
            self.found.conv = "the end of the chain after the TorchScript graph's last convolution"
        self._finish(logits, head_ok, head_reason, bool(convs), conv_reason, relu_layers, self._dropout_reason())

    @staticmethod
    def _dropout_reason() -> str:
        return ("hooks do not work on a TorchScript model, so its dropout layers cannot be given one mask per pass "
                "for MC dropout")

    @staticmethod
    def _script_linear(node) -> Optional[nn.Linear]:
        """An nn.Linear holding the constant weight and bias of a frozen graph's aten::linear or addmm node."""
        def constant(value):
            """The constant tensor a value holds; None for a None constant; False when it is not a constant."""
            n = value.node()
            if n.kind() != "prim::Constant":
                return False
            return n.output().toIValue() if n.output().type().kind() == "TensorType" else None

        ins = list(node.inputs())
        if _kind(node) == "linear":
            weight, bias = constant(ins[1]), constant(ins[2]) if len(ins) > 2 else None
        else:  # addmm(bias, x, t(weight), beta, alpha)
            t_node = ins[2].node()
            if t_node.kind() not in ("aten::t", "aten::transpose", "aten::permute"):
                return None
            weight, bias = constant(list(t_node.inputs())[0]), constant(ins[0])
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or bias is False:
            return None
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer.requires_grad_(False)

    def _functions(self, device: torch.device) -> tuple:
        """(main, relus): graph functions returning the values named in `_outputs`, and (logits, *ReLU outputs)."""
        key = str(device)
        if key not in self._fns:
            graph, nodes = self._frozen_graph()
            if "features" in self._outputs:
                last = [n for n in nodes if _kind(n) in ("linear", "addmm")][-1]
                graph.registerOutput(list(last.inputs())[1 if _kind(last) == "addmm" else 0])
            if "maps" in self._outputs:
                graph.registerOutput(self._chain_end(nodes))
            graph.makeMultiOutputIntoTuple()
            graph.eraseInput(0)  # `self`: a frozen graph reads no attribute
            main = torch._C._create_function_from_graph("ood_forward", graph)
            graph, nodes = self._frozen_graph()
            for n in nodes:
                if _kind(n) in ("relu", "relu_"):
                    graph.registerOutput(n.output())
            graph.makeMultiOutputIntoTuple()
            graph.eraseInput(0)
            self._fns[key] = (main, torch._C._create_function_from_graph("ood_relus", graph))
        return self._fns[key]

    @staticmethod
    def _chain_end(nodes):
        """The output of the last convolution, followed while it feeds exactly one chain op (BN, ReLU, residual
        add, ...) in the same block."""
        conv = [n for n in nodes if _kind(n) in ("conv2d", "_convolution", "convolution")][-1]
        value = conv.output()
        while len(value.uses()) == 1:
            user = value.uses()[0].user
            if _kind(user) not in _CHAIN_OPS or user.owningBlock() is not conv.owningBlock():
                break
            value = user.output()
        return value

    def _pass(self, x, keys):
        if not self._outputs:  # the graph would not take extra outputs
            return self.net(x), {k: [] for k in keys}
        main, relus = self._functions(x.device)
        got: dict[str, list] = {k: [] for k in keys}
        if "relu" in keys:
            out = relus(x)
            out = out if isinstance(out, tuple) else (out,)
            got["relu"] = list(out[1:])
            if set(keys) == {"relu"}:
                return out[0], got
        if torch.is_grad_enabled() and not x.requires_grad and "maps" in self._outputs:
            x = x.detach().requires_grad_(True)  # the frozen weights are constants: give autograd a way in
        out = main(x)
        out = out if isinstance(out, tuple) else (out,)
        values = dict(zip(self._outputs, out))
        if "maps" in values:
            self.conv_tap(values["maps"])  # Grad-CAM's hook point: the tap returns the tensor itself
        for k in keys:
            if k in values:
                got[k] = [values[k]]
        return values["logits"], got


__all__ = ["ExportedClassifier", "ScriptClassifier", "rewrite_exported"]

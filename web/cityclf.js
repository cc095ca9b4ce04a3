// Shows the scores and labels a CityClassifiers node reports (its "text" UI output)
// in a read-only box on the node, like the core Preview Any node does. The box is as
// tall as its text, up to MAX_LINES lines (then it scrolls), and the node grows to fit it.
import { app } from "../../scripts/app.js";

const BOX = "cityclf_results";
const LINE_PX = 15;
const PAD_PX = 8;
const MAX_LINES = 16;
const FRAME_PX = 24; // the frontend's margin around DOM widgets (2 x 10 px) and the textarea's border

function boxHeight(lineCount) {
  return Math.min(MAX_LINES, Math.max(1, lineCount)) * LINE_PX + PAD_PX + FRAME_PX;
}

function showText(node, lines) {
  const text = Array.isArray(lines) ? lines.join("\n") : String(lines ?? "");
  let widget = node.widgets?.find((w) => w.name === BOX);
  if (!widget) {
    const el = document.createElement("textarea");
    el.readOnly = true;
    el.wrap = "off";
    el.style.cssText =
      `width:100%;height:100%;box-sizing:border-box;font:11px/${LINE_PX}px monospace;` +
      `padding:${PAD_PX / 2}px;opacity:0.85;resize:none;overflow:auto;white-space:pre;`;
    const box = { height: boxHeight(1) };
    widget = node.addDOMWidget(BOX, "customtext", el, {
      getValue: () => el.value,
      setValue: (v) => { el.value = v; },
      getMinHeight: () => box.height,
      getMaxHeight: () => box.height,
      getHeight: () => box.height,
      serialize: false, // not part of widgets_values: keeps saved workflows positional
    });
    widget.serialize = false;
    widget.element = el;
    widget.cityclfBox = box;
  }
  widget.element.value = text;
  widget.cityclfBox.height = boxHeight(text.split("\n").length);
  const wanted = node.computeSize();
  node.setSize([Math.max(node.size[0], wanted[0]), wanted[1]]);
  node.setDirtyCanvas?.(true, true);
}

// A widget whose input is linked (the Tag node's `paths` fed by Load Images) takes its value from the link:
// its text box is hidden, and shown again when the link is removed.
function hideLinkedWidgets(node) {
  let changed = false;
  for (const input of node.inputs ?? []) {
    const widget = input.widget && node.widgets?.find((w) => w.name === input.widget.name);
    if (!widget) continue;
    const linked = input.link != null;
    if (Boolean(widget.hidden) !== linked) {
      widget.hidden = linked;
      if (widget.element) widget.element.hidden = linked;
      changed = true;
    }
  }
  if (changed) {
    node.setSize([node.size[0], node.computeSize()[1]]);
    node.setDirtyCanvas?.(true, true);
  }
}

app.registerExtension({
  name: "cityclf.ShowResults",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("CityClf")) return;
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const result = onConnectionsChange?.apply(this, arguments);
      hideLinkedWidgets(this);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {  // a loaded workflow's links
      const result = onConfigure?.apply(this, arguments);
      queueMicrotask(() => hideLinkedWidgets(this));
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text) showText(this, message.text);
    };
  },
});

// Shows the scores and labels a CityClassifiers node reports (its "text" UI output)
// in a read-only box on the node, like the core Preview Any node does.
import { app } from "../../scripts/app.js";

const BOX = "cityclf_results";

function showText(node, lines) {
  const text = Array.isArray(lines) ? lines.join("\n") : String(lines ?? "");
  let widget = node.widgets?.find((w) => w.name === BOX);
  if (!widget) {
    const el = document.createElement("textarea");
    el.readOnly = true;
    el.style.cssText = "width:100%;font:11px monospace;opacity:0.85;resize:none;";
    widget = node.addDOMWidget(BOX, "customtext", el, {
      getValue: () => el.value,
      setValue: (v) => { el.value = v; },
      serialize: false, // not part of widgets_values: keeps saved workflows positional
    });
    widget.serialize = false;
    widget.element = el;
  }
  widget.element.value = text;
  widget.element.rows = Math.min(12, Math.max(2, text.split("\n").length));
  node.setSize([node.size[0], node.computeSize()[1]]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "cityclf.ShowResults",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("CityClf")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text) showText(this, message.text);
    };
  },
});

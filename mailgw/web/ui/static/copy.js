// Copy buttons: copy the text of the element named by data-copy. Without
// JavaScript (or clipboard access) the text is still there to select.
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button.copy");
  if (!button) { return; }
  var source = document.getElementById(button.getAttribute("data-copy"));
  if (!source) { return; }
  var text = source.textContent.trim();
  function done(label) {
    button.textContent = label;
    button.classList.add("copied");
    setTimeout(function () { button.textContent = "Copy"; button.classList.remove("copied"); }, 2000);
  }
  function select() {
    var range = document.createRange();
    range.selectNodeContents(source);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    done("Selected: press Ctrl+C");
  }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(function () { done("Copied"); }, select);
  } else {
    select();
  }
});

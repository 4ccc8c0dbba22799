// Live refresh: re-fetch the live part of this page (the same URL with fragment=1) every
// data-refresh seconds and swap it in; pauses while the tab is hidden. No external code.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) return;
  var seconds = parseFloat(live.getAttribute("data-refresh") || "0");
  if (!(seconds > 0)) return;
  function refresh() {
    if (document.hidden) return;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    fetch(url.toString(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        live.innerHTML = html;
        var status = document.getElementById("task-status");
        if (status && ["done", "finished", "failed", "aborted", "broken"].indexOf(status.textContent) >= 0) {
          window.clearInterval(timer);
        }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  var timer = window.setInterval(refresh, seconds * 1000);
})();

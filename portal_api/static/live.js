// Keeps a page current without a reload: listens to the page's event stream (EventSource) and, when
// something it shows changed, fetches the page's live region again and swaps it in. Our own code.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource || !live.dataset.events) return;
  var status = document.getElementById("live-status");
  var changed = [];
  var timer = null;

  function say(text) { if (status) status.textContent = text; }

  function refresh() {
    timer = null;
    var ids = changed; changed = [];
    fetch(live.dataset.refresh || window.location.href, {
      headers: { "X-Fragment": "1" }, credentials: "same-origin", cache: "no-store"
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    }).then(function (html) {
      var focusedId = document.activeElement && document.activeElement.id;
      live.innerHTML = html;
      if (focusedId) { var again = document.getElementById(focusedId); if (again) again.focus(); }
      ids.forEach(function (id) {
        live.querySelectorAll('[data-appointment-id="' + id + '"]').forEach(function (row) {
          row.classList.add("changed");
        });
      });
      say("Updated " + new Date().toLocaleTimeString());
      document.dispatchEvent(new CustomEvent("live:updated", { detail: ids }));
    }).catch(function () { say("Could not refresh; retrying on the next change."); });
  }

  var source = new EventSource(live.dataset.events);
  source.addEventListener("ready", function () { say("Live"); live.dataset.connected = "1"; });
  source.addEventListener("view_changed", function (event) {
    var data = {};
    try { data = JSON.parse(event.data); } catch (e) { return; }
    // One event per change, listing every view it touched (feed v2): note each appointment named.
    (data.changes || []).forEach(function (change) {
      var id = change.appointment_id;
      if (id && changed.indexOf(id) < 0) changed.push(id);
    });
    if (timer === null) timer = setTimeout(refresh, 40);
  });
  source.onerror = function () { say("Reconnecting…"); };
})();

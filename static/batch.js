/* The batch page: upload with progress, then follow the server's progress events.
   Without this script the form still works: it posts and the page answers when done. */
(function () {
  "use strict";

  function setup() {
    var form = document.getElementById("batch-form");
    if (!form || !window.XMLHttpRequest || !window.FormData) return;
    form.addEventListener("submit", function (event) {
      var input = form.querySelector("input[type=file]");
      if (!input || !input.files || !input.files.length) return; // let the server say what is missing
      event.preventDefault();
      send(form);
    });
  }

  function send(form) {
    var panel = document.getElementById("batch-progress");
    var bar = panel.querySelector("progress");
    var status = panel.querySelector(".status");
    var outcome = document.getElementById("batch-outcome");
    var button = document.getElementById("batch-submit");
    var xhr = new XMLHttpRequest();
    var seen = 0;
    var finished = false;

    function show(text, fraction) {
      status.textContent = text;
      if (fraction === null || fraction === undefined) bar.removeAttribute("value");
      else bar.value = fraction;
    }

    function handle(message) {
      if (message.event === "started") {
        show("Uploaded; checking and predicting…", 0.5);
      } else if (message.event === "progress") {
        var rows = message.rows.toLocaleString();
        var text = message.errors
          ? "Checked " + rows + " rows: " + message.errors.toLocaleString() + " error(s) so far…"
          : "Checked and predicted " + rows + " passengers…";
        show(text, message.fraction === null ? null : 0.5 + 0.5 * message.fraction);
      } else if (message.event === "done") {
        finished = true;
        outcome.innerHTML = message.html;
        show(message.status === 200 ? "Done." : "Finished: see below.", 1);
      }
    }

    function drain() {
      var text = xhr.responseText;
      var end;
      while ((end = text.indexOf("\n", seen)) >= 0) {
        var line = text.slice(seen, end);
        seen = end + 1;
        if (line) handle(JSON.parse(line));
      }
    }

    function replacePage(html) {
      // An error page (an expired form, a file too large): show its content here.
      var doc = new DOMParser().parseFromString(html, "text/html");
      var main = doc.querySelector("main");
      document.querySelector("main").innerHTML = main ? main.innerHTML : "<p>The server answered " + xhr.status + ".</p>";
      setup();
    }

    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/x-ndjson");
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) show("Uploading… " + Math.round((100 * e.loaded) / e.total) + "%", (0.5 * e.loaded) / e.total);
    };
    xhr.onprogress = function () {
      if (xhr.status === 200) drain();
    };
    xhr.onload = function () {
      button.disabled = false;
      var type = xhr.getResponseHeader("Content-Type") || "";
      if (xhr.status === 200 && type.indexOf("application/x-ndjson") === 0) {
        drain();
        if (!finished) show("The server stopped before the end; upload the file again.", null);
      } else {
        replacePage(xhr.responseText);
      }
    };
    xhr.onerror = function () {
      button.disabled = false;
      show("The connection was lost; upload the file again.", null);
    };
    outcome.innerHTML = "";
    panel.hidden = false;
    button.disabled = true;
    show("Uploading…", 0);
    xhr.send(new FormData(form));
  }

  setup();
})();

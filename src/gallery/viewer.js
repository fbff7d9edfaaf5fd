// lumen gallery viewer: decodes the page's lumen.shape/1 blob exactly as the web client does
// (base64 -> little-endian Float32Array positions, Uint8Array 1-based part ids and attachment)
// and draws it with WebGL: orbit, zoom, parts shown/hidden/highlighted, colour by part or by
// attachment. What it decoded is written as JSON into <pre id="decoded"> for tests and tools.
(function () {
  "use strict";
  var PAL = window.LUMEN_PALETTE;
  var FORMAT = "lumen.shape/1";

  function $(id) { return document.getElementById(id); }
  function report(obj) { $("decoded").textContent = JSON.stringify(obj); }

  function bytesOf(b64, what) {
    if (typeof b64 !== "string") throw new Error(what + ": not a base64 string");
    var bin;
    try { bin = atob(b64); } catch (e) { throw new Error(what + ": bad base64"); }
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // The same checks as lumen's decoder (src/asset.rs), with the same first-problem messages.
  function decode(text) {
    var a;
    try { a = JSON.parse(text); } catch (e) { throw new Error("not JSON (" + e.message + ")"); }
    if (a === null || typeof a !== "object" || Array.isArray(a)) throw new Error("not a JSON object");
    if (a.format === undefined) throw new Error("no \"format\" field");
    if (a.format !== FORMAT) throw new Error("format " + JSON.stringify(a.format) + ", expected \"" + FORMAT + "\"");
    var n = a.num_points;
    if (!Number.isInteger(n) || n <= 0) throw new Error("num_points is " + n);
    var raw = bytesOf(a.positions, "positions");
    if (raw.length !== n * 12) throw new Error("positions: " + raw.length + " bytes, expected " + n * 12 + " for " + n + " points");
    // Little-endian f32 on every host (a typed-array view would follow the host's byte order).
    var dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    var pos = new Float32Array(n * 3);
    for (var i = 0; i < n * 3; i++) {
      var v = dv.getFloat32(i * 4, true);
      if (!isFinite(v)) throw new Error("positions: point " + Math.floor(i / 3) + " has a non-finite coordinate");
      if (Math.abs(v) > 1 + 1e-4) throw new Error("positions: point " + Math.floor(i / 3) + " lies outside [-1, 1]^3 (" + v + ")");
      pos[i] = v;
    }
    var ids = bytesOf(a.part_ids, "part_ids");
    if (ids.length !== n) throw new Error("part_ids: " + ids.length + " entries, expected " + n);
    var names = a.part_names;
    if (!Array.isArray(names) || names.length === 0 || names.length > 255) throw new Error("part_names: " + (Array.isArray(names) ? names.length : "no") + " names");
    var counts = new Array(names.length + 1).fill(0);
    for (i = 0; i < n; i++) {
      if (ids[i] > names.length) throw new Error("part_ids: point " + i + " has id " + ids[i] + " but only " + names.length + " parts are named");
      counts[ids[i]]++;
    }
    var att = bytesOf(a.attachment, "attachment");
    if (att.length !== n) throw new Error("attachment: " + att.length + " entries, expected " + n);
    if (!a.pipeline || (a.pipeline.name !== "partcrafter" && a.pipeline.name !== "procedural")) throw new Error("pipeline is unknown");
    return { asset: a, n: n, pos: pos, ids: ids, att: att, names: names.map(String), counts: counts };
  }

  function partColour(id) {
    return id === 0 ? PAL.unassigned : PAL.parts[(id - 1) % PAL.parts.length];
  }
  // Attachment: joint (0) blue -> extremity (255) yellow.
  function attachColour(v) {
    var t = v / 255;
    return [47 + t * (255 - 47), 90 + t * (210 - 90), 224 + t * (60 - 224)];
  }

  var VS = [
    "attribute vec3 aPos; attribute vec4 aCol;",
    "uniform mat4 uMvp; uniform float uSize;",
    "varying vec4 vCol; varying float vNear;",
    "void main() {",
    "  vec4 p = uMvp * vec4(aPos, 1.0);",
    "  gl_Position = p; gl_PointSize = uSize; vCol = aCol; vNear = clamp(0.5 - 0.5 * p.z, 0.0, 1.0);",
    "}"].join("\n");
  // Same shading as the preview pictures: depth and a sphere-like rim, 0.35..1 of the colour.
  var FS = [
    "precision mediump float;",
    "varying vec4 vCol; varying float vNear;",
    "void main() {",
    "  if (vCol.a < 0.5) discard;",
    "  vec2 c = gl_PointCoord * 2.0 - 1.0; float r2 = dot(c, c);",
    "  if (r2 > 1.0) discard;",
    "  float f = 0.35 + 0.65 * (0.6 * vNear + 0.4 * sqrt(1.0 - r2));",
    "  gl_FragColor = vec4(vCol.rgb * f, 1.0);",
    "}"].join("\n");

  function compile(gl, type, src) {
    var s = gl.createShader(type);
    gl.shaderSource(s, src);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error("shader: " + gl.getShaderInfoLog(s));
    return s;
  }

  function Viewer(canvas, d) {
    var gl = canvas.getContext("webgl", { antialias: false, preserveDrawingBuffer: true });
    if (!gl) throw new Error("WebGL is not available in this browser");
    this.gl = gl; this.canvas = canvas; this.d = d;
    var prog = gl.createProgram();
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VS));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FS));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error("program: " + gl.getProgramInfoLog(prog));
    gl.useProgram(prog);
    this.loc = {
      pos: gl.getAttribLocation(prog, "aPos"), col: gl.getAttribLocation(prog, "aCol"),
      mvp: gl.getUniformLocation(prog, "uMvp"), size: gl.getUniformLocation(prog, "uSize")
    };
    this.posBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
    gl.bufferData(gl.ARRAY_BUFFER, d.pos, gl.STATIC_DRAW);
    this.colBuf = gl.createBuffer();
    // Frame: bounding-box centre and farthest point, like the pictures.
    var lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (var i = 0; i < d.n; i++) for (var k = 0; k < 3; k++) {
      lo[k] = Math.min(lo[k], d.pos[3 * i + k]); hi[k] = Math.max(hi[k], d.pos[3 * i + k]);
    }
    this.centre = [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2];
    var r = 1e-3;
    for (i = 0; i < d.n; i++) {
      var dx = d.pos[3 * i] - this.centre[0], dy = d.pos[3 * i + 1] - this.centre[1], dz = d.pos[3 * i + 2] - this.centre[2];
      r = Math.max(r, Math.sqrt(dx * dx + dy * dy + dz * dz));
    }
    this.radius = r;
    this.visible = new Array(d.names.length + 1).fill(true);
    this.highlight = null;
    this.mode = "part";
    this.reset();
    this.recolour();
  }

  Viewer.prototype.reset = function () {
    // The pictures' three-quarter view: 45 degrees around the vertical, 30 degrees down.
    this.yaw = -Math.PI / 4; this.pitch = Math.PI / 6; this.zoom = 1;
  };

  Viewer.prototype.recolour = function () {
    var d = this.d, col = new Float32Array(d.n * 4);
    for (var i = 0; i < d.n; i++) {
      var id = d.ids[i];
      var c = this.mode === "part" ? partColour(id) : attachColour(d.att[i]);
      var dim = this.highlight !== null && id !== this.highlight;
      for (var k = 0; k < 3; k++) col[4 * i + k] = (dim ? 0.25 * c[k] + 0.75 * 70 : c[k]) / 255;
      col[4 * i + 3] = this.visible[id] ? 1 : 0;
    }
    var gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.colBuf);
    gl.bufferData(gl.ARRAY_BUFFER, col, gl.DYNAMIC_DRAW);
    this.draw();
  };

  Viewer.prototype.matrix = function () {
    var cy = Math.cos(this.yaw), sy = Math.sin(this.yaw), cp = Math.cos(this.pitch), sp = Math.sin(this.pitch);
    // Rows of R = Rx(pitch) * Ry(yaw).
    var R = [[cy, 0, sy], [sp * sy, cp, -sp * cy], [-cp * sy, sp, cp * cy]];
    var w = this.canvas.width, h = this.canvas.height;
    var s = 0.9 * this.zoom / this.radius;
    var scale = [s * Math.min(1, h / w), s * Math.min(1, w / h), -0.9 / this.radius];
    var m = new Float32Array(16);
    for (var row = 0; row < 3; row++) {
      var t = 0;
      for (var col = 0; col < 3; col++) {
        m[col * 4 + row] = scale[row] * R[row][col];
        t -= m[col * 4 + row] * this.centre[col];
      }
      m[12 + row] = t;
    }
    m[15] = 1;
    return m;
  };

  Viewer.prototype.draw = function () {
    var gl = this.gl, d = this.d, L = this.loc;
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    var bg = PAL.background;
    gl.clearColor(bg[0] / 255, bg[1] / 255, bg[2] / 255, 1);
    gl.clearDepth(1);
    gl.enable(gl.DEPTH_TEST);
    gl.depthFunc(gl.LESS);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.uniformMatrix4fv(L.mvp, false, this.matrix());
    var px = Math.min(this.canvas.width, this.canvas.height);
    gl.uniform1f(L.size, Math.max(2, Math.min(12, px * this.zoom / Math.sqrt(d.n))));
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
    gl.enableVertexAttribArray(L.pos);
    gl.vertexAttribPointer(L.pos, 3, gl.FLOAT, false, 0, 0);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.colBuf);
    gl.enableVertexAttribArray(L.col);
    gl.vertexAttribPointer(L.col, 4, gl.FLOAT, false, 0, 0);
    gl.drawArrays(gl.POINTS, 0, d.n);
  };

  Viewer.prototype.bind = function () {
    var self = this, c = this.canvas, drag = null;
    c.addEventListener("pointerdown", function (e) { drag = [e.clientX, e.clientY]; c.setPointerCapture(e.pointerId); });
    c.addEventListener("pointerup", function () { drag = null; });
    c.addEventListener("pointermove", function (e) {
      if (!drag) return;
      self.yaw += (e.clientX - drag[0]) * 0.01;
      self.pitch = Math.max(-1.55, Math.min(1.55, self.pitch + (e.clientY - drag[1]) * 0.01));
      drag = [e.clientX, e.clientY];
      self.draw();
    });
    c.addEventListener("wheel", function (e) {
      e.preventDefault();
      self.zoom = Math.max(0.2, Math.min(20, self.zoom * Math.exp(-e.deltaY * 0.001)));
      self.draw();
    }, { passive: false });
    $("mode").addEventListener("change", function () {
      self.mode = this.value;
      $("ramp").hidden = self.mode !== "attachment";
      self.recolour();
    });
    $("reset").addEventListener("click", function () { self.reset(); self.draw(); });
    $("all").addEventListener("click", function () {
      self.visible.fill(true); self.highlight = null;
      Array.prototype.forEach.call(document.querySelectorAll("#legend input"), function (b) { b.checked = true; });
      legendState(self);
      self.recolour();
    });
  };

  function legendState(v) {
    Array.prototype.forEach.call(document.querySelectorAll("#legend li"), function (li) {
      var id = Number(li.dataset.id);
      li.classList.toggle("dim", !v.visible[id]);
      li.classList.toggle("highlight", v.highlight === id);
    });
  }

  function buildLegend(v) {
    var d = v.d, ul = $("legend");
    var ids = d.names.map(function (_, i) { return i + 1; });
    if (d.counts[0] > 0) ids.push(0);
    ids.forEach(function (id) {
      var li = document.createElement("li");
      li.dataset.id = id;
      var box = document.createElement("input");
      box.type = "checkbox"; box.checked = true; box.title = "show or hide";
      box.addEventListener("change", function () { v.visible[id] = box.checked; legendState(v); v.recolour(); });
      var sw = document.createElement("span");
      sw.className = "swatch";
      var c = partColour(id);
      sw.style.background = "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = id === 0 ? "unassigned" : d.names[id - 1];
      name.addEventListener("click", function () { v.highlight = v.highlight === id ? null : id; legendState(v); v.recolour(); });
      var count = document.createElement("span");
      count.className = "count";
      count.textContent = d.counts[id];
      li.append(box, sw, name, count);
      ul.appendChild(li);
    });
  }

  function buildMeta(d) {
    var a = d.asset, dl = $("meta");
    var total = 0;
    Object.keys(a.timings_ms || {}).forEach(function (k) { total += a.timings_ms[k]; });
    [["concept", a.text], ["pipeline", a.pipeline.name], ["points", d.n], ["parts", d.names.length],
     ["seed", a.seed], ["created", a.created_at], ["time", total.toFixed(1) + " ms"],
     ["dropped parts", (a.dropped_parts || []).length]].forEach(function (kv) {
      var dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = kv[0]; dd.textContent = String(kv[1]);
      dl.append(dt, dd);
    });
    buildQuality(qualityOf(a));
  }

  // The asset's verdict and reasons; an asset made before verdicts were recorded is unknown.
  function qualityOf(a) {
    var q = a.quality;
    if (!q || typeof q !== "object") return { verdict: "unknown", reasons: [], below_gate: false };
    var gate = q.gate && q.gate.passed === false;
    return { verdict: String(q.verdict), reasons: (q.reasons || []).map(String), below_gate: !!gate,
             attempts: (q.attempts || []).length };
  }

  function buildQuality(q) {
    var box = $("quality");
    var badge = document.createElement("span");
    badge.className = "badge " + q.verdict;
    badge.textContent = q.verdict + (q.below_gate ? " (below the gate)" : "");
    box.appendChild(badge);
    if (q.attempts > 1) box.appendChild(document.createTextNode(" after " + q.attempts + " attempts"));
    var ul = document.createElement("ul");
    ul.id = "reasons";
    q.reasons.forEach(function (r) {
      var li = document.createElement("li");
      li.textContent = r;
      ul.appendChild(li);
    });
    box.appendChild(ul);
  }

  // Links can open a viewer in a given state: #mode=attachment&hide=2,3&highlight=1.
  function applyHash(v, decoded) {
    var params = new URLSearchParams(location.hash.slice(1));
    if (params.get("mode") === "attachment") {
      v.mode = "attachment"; $("mode").value = "attachment"; $("ramp").hidden = false;
    }
    (params.get("hide") || "").split(",").filter(Boolean).forEach(function (s) {
      var id = Number(s);
      if (Number.isInteger(id) && id >= 0 && id < v.visible.length) {
        v.visible[id] = false;
        var box = document.querySelector('#legend li[data-id="' + id + '"] input');
        if (box) box.checked = false;
      }
    });
    if (params.has("highlight")) v.highlight = Number(params.get("highlight"));
    legendState(v);
    v.recolour();
    decoded.mode = v.mode;
    decoded.hidden = v.visible.map(function (on, id) { return on ? -1 : id; }).filter(function (id) { return id >= 0; });
    decoded.highlight = v.highlight;
  }

  function showProblem(msg) {
    var p = $("problem");
    p.textContent = "Invalid asset: " + msg;
    p.hidden = false;
    $("view").hidden = true;
  }

  var d;
  try {
    d = decode($("blob").textContent);
  } catch (e) {
    showProblem(e.message);
    report({ status: "invalid", error: e.message });
    return;
  }
  var canvas = $("view");
  var decoded = {
    status: "ok", key: d.asset.key, text: d.asset.text, pipeline: d.asset.pipeline.name,
    num_points: d.n, num_parts: d.names.length, part_names: d.names, part_counts: d.counts.slice(1),
    unassigned: d.counts[0], webgl: false, quality: qualityOf(d.asset)
  };
  buildLegend({ d: d, visible: [], highlight: null });
  buildMeta(d);
  try {
    var v = new Viewer(canvas, d);
    // The legend again, now wired to the viewer.
    $("legend").textContent = "";
    buildLegend(v);
    v.bind();
    applyHash(v, decoded);
    decoded.webgl = true;
    var rect = canvas.getBoundingClientRect();
    decoded.canvas = { x: rect.left, y: rect.top, width: rect.width, height: rect.height };
  } catch (e) {
    decoded.webgl_error = e.message;
    var p = $("problem");
    p.textContent = "Cannot draw: " + e.message;
    p.hidden = false;
  }
  report(decoded);
})();

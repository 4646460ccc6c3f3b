// Live preview client shared by the studio page and the OBS overlay.
// The server sends the newest frame (4-byte header length, JSON header, then the image with alpha: raw RGBA
// rows for a page on the same machine, PNG otherwise) and waits for an acknowledgement before the next, so a
// slow page only sees fewer frames.
"use strict";

function connectPreview(canvas, onFrame) {
  const ctx = canvas.getContext("2d");
  let retry = 250;
  function open() {
    const local = ["127.0.0.1", "localhost", "[::1]"].includes(location.hostname);
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host +
                             "/ws/preview?format=" + (local ? "rgba" : "png"));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { retry = 250; };
    ws.onmessage = async (ev) => {
      const arrived = performance.now();
      const buf = ev.data;
      const n = new DataView(buf).getUint32(0);
      const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
      try {
        if (canvas.width !== meta.width || canvas.height !== meta.height) {
          canvas.width = meta.width; canvas.height = meta.height;
        }
        if (meta.format === "rgba") {
          const px = new Uint8ClampedArray(buf, 4 + n, meta.width * meta.height * 4);
          ctx.putImageData(new ImageData(px, meta.width, meta.height), 0, 0);
        } else {
          const bmp = await createImageBitmap(new Blob([new Uint8Array(buf, 4 + n)], { type: "image/png" }));
          ctx.clearRect(0, 0, canvas.width, canvas.height);
          ctx.drawImage(bmp, 0, 0);
          bmp.close();
        }
        requestAnimationFrame(() => onFrame && onFrame(meta, performance.now(), arrived));
      } finally {
        if (ws.readyState === WebSocket.OPEN) ws.send("ack");
      }
    };
    ws.onclose = () => { setTimeout(open, retry); retry = Math.min(retry * 2, 4000); };
  }
  open();
}

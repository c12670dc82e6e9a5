// The SSE parser shared by the chat page the server serves at `/` (which includes this file)
// and the browser examples (which load it with <script src="sse.js">).

// An incremental parser for the text/event-stream format (the WHATWG HTML "event stream
// interpretation"). Feed it text as it arrives; it keeps whatever follows the last line ending
// for the next feed, so an event split across reads comes out whole. Lines end with "\n",
// "\r\n" or "\r", and a "\r" at the end of one feed may be followed by its "\n" in the next.
function createSseParser(onEvent) {
  let partial = "";      // the unfinished line carried over from the previous feed
  let afterCR = false;   // the previous feed ended with "\r": skip a "\n" that starts this one
  let data = [];         // the data lines of the event being built
  let type = "";
  let lastEventId = "";  // persists across events, as in EventSource

  function line(text) {
    if (text === "") {   // a blank line dispatches the event built so far
      if (data.length > 0) {
        onEvent({ type: type || "message", data: data.join("\n"), lastEventId });
      }
      data = [];
      type = "";
      return;
    }
    if (text[0] === ":") return;  // a comment, such as the server's ": keep-alive"
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") type = value;
    else if (field === "id" && !value.includes("\0")) lastEventId = value;
    // "retry" only matters to a client that reconnects by itself; other fields are ignored.
  }

  return function feed(chunk) {
    let pos = 0;
    if (afterCR && chunk.length > 0) {
      if (chunk[0] === "\n") pos = 1;
      afterCR = false;
    }
    const ending = /[\r\n]/g;
    while (pos < chunk.length) {
      ending.lastIndex = pos;
      const hit = ending.exec(chunk);
      if (hit === null) {
        partial += chunk.slice(pos);
        break;
      }
      const text = partial + chunk.slice(pos, hit.index);
      partial = "";
      pos = hit.index + 1;
      if (hit[0] === "\r") {
        if (pos === chunk.length) afterCR = true;
        else if (chunk[pos] === "\n") pos += 1;
      }
      line(text);
    }
  };
}

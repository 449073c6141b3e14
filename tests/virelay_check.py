"""Run with ViRelAy's own interpreter: open a project the way the viewer does and fetch every
view the browser would, through the viewer's REST API (Flask test client, no socket).

Prints one JSON line with what it saw; exits non-zero on any failure.
Usage: python virelay_check.py project.yaml
"""

import json
import sys

import numpy
from virelay.model import Workspace
from virelay.server import Server

workspace = Workspace()
workspace.add_project(sys.argv[1])
project = workspace.get_project(workspace.get_project_names()[0])
seen = {"samples": len(project.dataset), "methods": {}, "failures": []}
for method in project.get_analysis_methods():
    categories = project.get_analysis_categories(method)
    clusterings = project.get_analysis_clustering_names(method)
    embeddings = project.get_analysis_embedding_names(method)
    entry = seen["methods"][method] = {"categories": {c.name: c.human_readable_name for c in categories},
                                       "clusterings": list(clusterings), "embeddings": list(embeddings), "points": {}}
    for category in categories:
        analysis = project.get_analysis(method, category.name, clusterings[0], embeddings[0])
        entry["points"][category.name] = int(len(analysis.attribution_indices))
        for index in analysis.attribution_indices[:: max(1, len(analysis.attribution_indices) // 20)]:
            sample, attribution = project.get_sample(int(index)), project.get_attribution(int(index))
            assert sample.data.shape == (32, 32, 3) and sample.data.dtype == numpy.uint8
            assert attribution.data.shape == (32, 32, 3)
            assert [label.index for label in sample.labels] == [label.index for label in attribution.labels]
            assert attribution.render_heatmap("black-fire-red", image_to_superimpose=sample.data).shape == (32, 32, 3)
first = project.get_sample(0)
seen["first_label"] = [label.name for label in first.labels]
attribution = project.get_attribution(0)
seen["first_prediction_argmax"] = int(numpy.argmax(attribution.prediction))
seen["first_attribution_sum"] = float(attribution.data.sum())

client = Server(workspace).app.test_client()
described = client.get("/api/projects/0").get_json()
urls = ["/api/projects", "/api/projects/0", "/api/projects/0/dataset/0", "/api/projects/0/dataset/0/image",
        "/api/projects/0/attributions?indices=0,1,2&imageMode=overlay", "/api/projects/0/attributions/1/heatmap?colorMap=black-fire-red&superimpose=true"]
for method in described["analysisMethods"]:
    for category in method["categories"]:
        for clustering in method["clusterings"]:
            for embedding in method["embeddings"]:
                urls.append(f"/api/projects/0/analyses/{method['name']}?category={category['name']}&clustering={clustering}&embedding={embedding}")
for url in urls:
    response = client.get(url)
    if response.status_code != 200:
        seen["failures"].append(f"{response.status_code} {url}")
    elif "/analyses/" in url:
        json.loads(response.data)  # strict JSON: a NaN would break the browser
seen["urls"] = len(urls)
workspace.close()
print(json.dumps(seen))
sys.exit(1 if seen["failures"] else 0)

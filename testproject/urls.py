from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("demo/downstream/things/<str:name>", views.downstream, name="downstream"),
    path("admin/", admin.site.urls),
]
